"""expiryd: turns Redis key expiries into database updates."""

from expiryd.expiry import Expiry

__version__ = "0.1.0"

__all__ = ["Expiry", "__version__"]
