"""expiryd: turns Redis key expiries into database updates."""

from expiryd.expiry import Expiry
from expiryd.retries import Permanent, Retry

__version__ = "0.1.0"

__all__ = ["Expiry", "Permanent", "Retry", "__version__"]
