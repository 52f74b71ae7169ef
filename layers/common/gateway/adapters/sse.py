"""Server-sent events: an incremental, byte-level parser (spec framing); the upstream streams feed
it their reads (``adapters.stream.SSEUpstreamStream``)."""

from __future__ import annotations

import re

from ..records import record


@record(eq=False)
class SSEEvent:
    """One server-sent event: its ``event:`` name (None when the event names none) and its data."""

    event: str | None
    data: str


class FramedChunk(dict):  # type: ignore[type-arg]
    """A chat chunk (the dict every consumer reads) that also carries its ``data:`` frame, made
    from the upstream's own bytes by the adapter: the chat relay sends ``sse`` instead of
    serialising the dict again (issue 15 lever 6b). Built once, never changed afterwards."""

    __slots__ = ("sse",)

    def __init__(self, chunk: dict, sse: bytes) -> None:  # type: ignore[type-arg]
        super().__init__(chunk)
        self.sse = sse


class FramedRun:
    """Consecutive chunks that only a relay uses, as their ``data:`` frames one after the other: the
    OpenAI-compatible stream's plain text deltas after its first chunk (issue 15, stream3). Not a
    dict on purpose: only a stream whose consumer set ``runs`` (the chat relay, which frames every
    chunk with ``chat.service._sse``, the one reader of it) yields it; every other consumer gets
    dicts."""

    __slots__ = ("sse",)

    def __init__(self, sse: bytes) -> None:
        self.sse = sse


_EOL = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Incremental SSE parser (spec framing: CRLF/LF/CR, ``:`` comments, multi-line ``data``)."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        if b"\r" not in buf:  # the usual LF-only stream: one split, no regex
            *lines, self._buf = buf.split(b"\n")
            line = self._line
            for raw in lines:
                line(raw, events)
            return events
        pos = 0
        while True:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the first half of CRLF: wait for more
            self._line(buf[pos:m.start()], events)
            pos = m.end()
        self._buf = buf[pos:]
        return events

    @property
    def idle(self) -> bool:
        """Between events: nothing of a line or an event kept from earlier reads."""
        return not self._buf and not self._data and self._event is None

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event that was not followed by a blank line still counts."""
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf.rstrip(b"\r"), events)
            self._buf = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event = None
            self._data = []
            return
        if raw[:6] == b"data: ":  # the usual field first
            self._data.append(raw[6:].decode("utf-8", "replace"))
            return
        if raw[:1] == b":":
            return  # comment / keep-alive (": OPENROUTER PROCESSING")
        line = raw.decode("utf-8", "replace")
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value

