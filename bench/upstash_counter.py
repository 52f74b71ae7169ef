"""The Upstash REST bridge (infra/local/upstash_bridge.py) plus ``GET /__bench/commands``: how many
Redis commands it has executed, counted as Upstash bills them (each command of a pipeline or
transaction is one). The benchmarks read it before and after a run to get commands per request.

    python -m bench.upstash_counter --port 8079 --redis-url redis://127.0.0.1:6379/0 --token T
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from infra.local.upstash_bridge import DEFAULT_REDIS_URL, UpstashBridge, create_app


class CountingBridge:
    def __init__(self, bridge: UpstashBridge) -> None:
        self.bridge = bridge

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope["path"] == "/__bench/commands":
            body = json.dumps({"commands": self.bridge.stats["commands"], **self.bridge.stats}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.bridge(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstash_counter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)

    import uvicorn

    uvicorn.run(CountingBridge(create_app(args.redis_url, args.token)), host=args.host, port=args.port,
                log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
