"""What a warm query container's expired copy of the models costs the request that finds it expired
(once per ``CATALOG_TTL_S`` per container; gateway/catalog/registry.py): the full read and rebuild
of every active model (``registry._reload``, what every expiry did before migration 0017) against
the check of ``catalog_version`` that keeps an unchanged copy.

    .venv/bin/python -m bench.catalog_expiry [--models 500] [--rounds 30]

A database of its own (migrated, the seed's models plus ``--models`` synthetic OpenRouter rows
priced like a discovered catalogue), one process, asyncio; the medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import psycopg

from tests.support import services

INSERT = """
INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length, max_completion_tokens,
                           prompt_price, completion_price, input_cache_read_price, input_modalities,
                           output_modalities, is_free, pricing_extra)
VALUES (%s, %s, 'openrouter', %s, 'bench', 131072, 16384, 0.0000003, 0.0000012, 0.00000003, '{text,image}',
        '{text}', false, '{"audio": "0.000002"}')
"""


async def measure(rounds: int) -> tuple[list[float], list[float]]:
    from gateway import db
    from gateway.catalog import registry

    await registry.models()
    full, check = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        await registry._reload()
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        await registry.models()  # CATALOG_TTL_S=0: expired, checked, kept
        check.append(time.perf_counter() - t)
    await db.close_pool()
    return full, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    services.ensure_services()
    url = services.create_database("mlp_bench")
    try:
        from gateway.migrate import migrate

        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(INSERT, [(f"bench/m{i}", f"Bench {i}", f"bench/m{i}") for i in range(args.models)])
            active = conn.execute("SELECT count(*) FROM model_pricing WHERE active").fetchone()
        os.environ.update({"DATABASE_URL": url, "CATALOG_TTL_S": "0"})
        full, check = asyncio.run(measure(args.rounds))
        print(f"{active[0] if active else '?'} active models, {args.rounds} rounds (medians): "
              f"full read and rebuild {1000 * statistics.median(full):.2f} ms; "
              f"expired copy checked and kept {1000 * statistics.median(check):.3f} ms")
    finally:
        services.drop_database(url)


if __name__ == "__main__":
    main()
