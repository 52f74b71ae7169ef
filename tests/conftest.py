"""Test settings shared by every tier. Environment is fixed before any gateway import."""

from __future__ import annotations

import os

os.environ["STAGE"] = "test"
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "MultiLLMTest")
os.environ["ADMIN_API_KEY"] = "test-admin-key-7f3a9c1e5b2d4f60"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _name in ("DATABASE_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "SECRETS_SSM_PATH",
              "TIERS_JSON", "CORS_ALLOW_ORIGINS"):
    os.environ.pop(_name, None)

ADMIN_KEY = os.environ["ADMIN_API_KEY"]
