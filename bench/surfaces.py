"""Overhead of every API surface next to chat (issue 13): the same short answer requested
directly from the fake upstream and through the gateway, per surface, c=1 and c=16,
non-streaming and streaming where the surface streams, then the money check.

    make bench-surfaces                          # = .venv/bin/python -m bench.surfaces
    .venv/bin/python -m bench.surfaces --requests 400 --repeat 3

Surfaces (gateway route, model → the upstream call it makes, which is the "direct" column):

* chat completions, ``openai/gpt-4o-mini``        → OpenAI ``/chat/completions``
* ``/v1/messages`` native, ``anthropic/claude-3.5-haiku`` → Anthropic ``/messages``
* ``/v1/messages`` translated, ``openai/gpt-4o-mini``     → OpenAI ``/chat/completions``
* ``/v1/responses``, ``openai/gpt-4o-mini``        → OpenAI ``/chat/completions`` (the Responses
  surface is translated onto the chat pipeline for every provider, OpenAI included)
* ``/v1/embeddings``, ``openai/text-embedding-3-small`` → OpenAI ``/embeddings`` (no stream)

The gateway runs as deployed, one process per function under uvicorn (bench/stack.py's services:
one database, the Upstash bridge with its command counter, one fake provider server):
QueryStreamFunction's ``stream_app`` (functions/query; it serves chat, messages and responses,
streaming or not, as the Function URL does) and EmbeddingsFunction's ``app``. Every gateway request
takes the full billing path (key, rate limit, reserve, upstream, settle). Afterwards every request
sent to the gateway (warm-ups included) must have left exactly one usage record, no reservation
may be open, and each balance must equal the sum of its ledger rows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.harness import best_of, cpu_seconds, descendants, load_average
from bench.stack import Proc, Services, spawn, start_services, wait_until
from bench.workload import MODEL, PROMPT
from infra.local.servers import free_port

ANTHROPIC_MODEL = "anthropic/claude-3.5-haiku"
EMBEDDING_MODEL = "openai/text-embedding-3-small"
WARMUP = 20  # sequential requests before each measured run (bench.harness.measure)


def _chat(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _messages(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    return body


def _responses(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": PROMPT, "max_output_tokens": 64}
    if stream:
        body["stream"] = True
    return body


def _embeddings(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "input": "The quick brown fox jumps over the lazy dog."}


def _upstream_model(model: str) -> str:
    return model.split("/", 1)[1]


@dataclass(frozen=True)
class Surface:
    name: str
    route: str                 # gateway path
    function: str              # "query" (stream_app) or "embeddings"
    model: str
    body: Callable[[str, bool], dict[str, Any]]
    direct_path: str           # fake upstream path of the call the gateway makes
    direct_body: Callable[[str, bool], dict[str, Any]]
    direct_headers: dict[str, str]
    streams: bool = True


OPENAI_AUTH = {"authorization": "Bearer sk-fake-openai"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"}

SURFACES = [
    Surface("chat completions (openai)", "/v1/chat/completions", "query", MODEL, _chat,
            "/openai/v1/chat/completions", _chat, OPENAI_AUTH),
    Surface("/v1/messages native (anthropic)", "/v1/messages", "query", ANTHROPIC_MODEL, _messages,
            "/anthropic/v1/messages", _messages, ANTHROPIC_AUTH),
    Surface("/v1/messages translated (openai)", "/v1/messages", "query", MODEL, _messages,
            "/openai/v1/chat/completions", _chat, OPENAI_AUTH),
    Surface("/v1/responses (openai)", "/v1/responses", "query", MODEL, _responses,
            "/openai/v1/chat/completions", _chat, OPENAI_AUTH),
    Surface("/v1/embeddings (openai)", "/v1/embeddings", "embeddings", EMBEDDING_MODEL, _embeddings,
            "/openai/v1/embeddings", _embeddings, OPENAI_AUTH, streams=False),
]


def provider_env(svc: Services) -> dict[str, str]:
    base = svc.upstream
    return {"ANTHROPIC_BASE_URL": f"{base}/anthropic/v1", "ANTHROPIC_API_KEY": "sk-ant-fake",
            "OPENROUTER_BASE_URL": f"{base}/openrouter/api/v1", "OPENROUTER_API_KEY": "sk-or-fake",
            "GEMINI_BASE_URL": f"{base}/gemini/v1beta", "GEMINI_API_KEY": "fake-gemini-key",
            "COMPAT_BASE_URL": f"{base}/compat/v1", "COMPAT_API_KEY": "fake-compat-key"}


def start_function(svc: Services, function: str, attr: str, route: str, body: dict[str, Any]) -> tuple[Proc, str]:
    port = free_port()
    env = svc.gateway_env(**provider_env(svc))
    proc = spawn(f"surf-{function}", [sys.executable, "-m", "uvicorn", f"app:{attr}", "--app-dir",
                                      f"functions/{function}", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-access-log", "--log-level", "warning",
                                      # as functions/query/run.sh serves the streaming function
                                      "--loop", "uvloop", "--http", "httptools"], env)
    base = f"http://127.0.0.1:{port}"
    wait_until(proc, base + route, body=body, headers={"authorization": f"Bearer {svc.api_key}"}, timeout=90)
    return proc, base


def money_check(svc: Services, sent: int) -> str:
    with psycopg.connect(svc.database_url) as conn:
        usage = conn.execute("SELECT count(*) FROM usage_records").fetchone()
        bad = conn.execute(
            "SELECT count(*) FROM balances b LEFT JOIN (SELECT user_id, sum(amount) s FROM ledger_entries "
            "GROUP BY 1) l USING (user_id) WHERE b.balance <> COALESCE(l.s, 0) OR b.reserved <> 0").fetchone()
    n_usage = usage[0] if usage else -1
    n_bad = bad[0] if bad else -1
    ok = n_usage == sent and n_bad == 0
    return (f"money check: {sent} gateway requests (warm-ups included), {n_usage} usage records, "
            f"{n_bad} balances != sum(ledger) or with an open reservation -> {'OK' if ok else 'FAILED'}")


async def main_async(requests: int, repeat: int, only: str | None) -> None:
    print(f"load at start: {load_average()}", flush=True)
    svc = start_services("mlp_surf")
    procs: list[Proc] = []
    try:
        key = {"authorization": f"Bearer {svc.api_key}"}
        query, query_base = start_function(svc, "query", "stream_app", "/v1/chat/completions", _chat(MODEL, False))
        procs.append(query)
        emb, emb_base = start_function(svc, "embeddings", "app", "/v1/embeddings", _embeddings(EMBEDDING_MODEL, False))
        procs.append(emb)
        sent = 2  # the two readiness probes
        rows: list[tuple[str, str, int, dict[str, float], dict[str, float]]] = []
        for s in SURFACES:
            if only and only not in s.name:
                continue
            base = query_base if s.function == "query" else emb_base
            for stream in (False, True) if s.streams else (False,):
                for c in (1, 16):
                    n = requests if c > 1 else max(100, requests // 4)
                    up = _upstream_model(s.model)
                    d = await best_of(repeat, svc.upstream + s.direct_path, s.direct_headers,
                                      s.direct_body(up, stream), n, c, stream=stream)
                    pids = descendants((query if s.function == "query" else emb).pid)
                    cpu0 = cpu_seconds(pids)
                    g = await best_of(repeat, base + s.route, key, s.body(s.model, stream), n, c, stream=stream)
                    g["cpu_ms"] = (cpu_seconds(pids) - cpu0) * 1000 / (repeat * (n + WARMUP))
                    sent += repeat * (n + WARMUP)
                    rows.append((s.name, "stream" if stream else "non-stream", c, d, g))
                    print(f"  {s.name} {'stream' if stream else 'non-stream'} c={c}: "
                          f"overhead p50 {g['p50'] - d['p50']:+.2f} ms, {g['rps']:.0f} req/s, "
                          f"{int(g['errors'])} errors", flush=True)
        await asyncio.sleep(0.5)  # settles of the last requests
        print(f"\nload at end: {load_average()}; requests per c=16 run {requests}, per c=1 run "
              f"{max(100, requests // 4)}, median of {repeat} runs\n")
        print("| surface | mode | c | direct p50 ms | gateway p50 ms | overhead p50 ms | direct p99 ms | "
              "gateway p99 ms | overhead p99 ms | gateway req/s | direct req/s | TTFB overhead p50 ms | "
              "gateway CPU ms/req | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, mode, c, d, g in rows:
            ttfb = f"{g['ttfb_p50'] - d['ttfb_p50']:+.2f}" if "ttfb_p50" in g and "ttfb_p50" in d else ""
            print(f"| {name} | {mode} | {c} | {d['p50']:.2f} | {g['p50']:.2f} | {g['p50'] - d['p50']:+.2f} | "
                  f"{d['p99']:.2f} | {g['p99']:.2f} | {g['p99'] - d['p99']:+.2f} | {g['rps']:.0f} | {d['rps']:.0f} | "
                  f"{ttfb} | {g['cpu_ms']:.2f} | {int(g['errors'])} |")
        print("\n" + money_check(svc, sent))
    finally:
        for proc in procs:
            proc.stop()
        svc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800, help="requests per c=16 run (c=1: a quarter, >= 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median run is reported")
    parser.add_argument("--only", help="only the surfaces whose name contains this")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.requests, args.repeat, args.only))


if __name__ == "__main__":
    main()
