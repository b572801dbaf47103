"""expiryd: turns Redis key expiries into database updates."""

from expiryd.expiry import Expiry
from expiryd.handlers.callables import batch
from expiryd.liveness import beat_here as beat
from expiryd.retries import Busy, Permanent, Retry

__version__ = "0.1.0"

__all__ = ["Busy", "Expiry", "Permanent", "Retry", "__version__", "batch", "beat"]
