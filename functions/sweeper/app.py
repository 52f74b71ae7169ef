"""SweeperFunction: the EventBridge Scheduler target (every 5 minutes) that settles orphaned
reservations. The logic lives in ``gateway.billing.sweeper``."""

from gateway.billing.sweeper import handler

__all__ = ["handler"]
