"""SweeperFunction: the EventBridge Scheduler target (every 5 minutes) that settles orphaned
reservations. The logic lives in ``gateway.money.sweeper``."""

from gateway import coldstart  # noqa: F401  (first: the import trims of gateway/coldstart.py)

# isort: split
from gateway.money.sweeper import handler

__all__ = ["handler"]
