"""SweeperFunction: the EventBridge Scheduler target (every 5 minutes) that settles orphaned
reservations. The logic lives in ``gateway.money.sweeper``."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from gateway.money.sweeper import handler

coldstart.done()

__all__ = ["handler"]
