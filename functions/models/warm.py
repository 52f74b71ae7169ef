"""ModelsWarmFunction: the EventBridge Scheduler target (every 30 min) that runs model discovery
and re-renders the cached catalogue. The logic lives in ``gateway.catalog.warm``."""

from gateway.catalog.warm import handler

__all__ = ["handler"]
