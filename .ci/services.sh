#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are running; start them with
# the documented commands if they have stopped. PgBouncer only needs to be installed: the tests
# start their own (tests/support/pgbouncer.py).
set -u
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || psql -h 127.0.0.1 -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing pgbouncer (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq pgbouncer >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq pgbouncer >/dev/null; }
  else
    echo "pgbouncer is not installed: sudo apt-get install pgbouncer" >&2; exit 1
  fi
fi
pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
redis_up || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
echo "services: PostgreSQL and Redis are up, pgbouncer is installed"
