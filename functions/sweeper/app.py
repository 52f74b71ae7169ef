"""SweeperFunction: the EventBridge Scheduler target (every 5 minutes) that settles orphaned
reservations. The logic lives in ``gateway.money.sweeper``."""

from gateway.money.sweeper import handler

__all__ = ["handler"]
