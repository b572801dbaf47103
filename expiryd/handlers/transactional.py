"""The handlers whose work is a transaction on expiryd's engine: orders, sql, and
callables that take `connection`. A group runs in one transaction with its inbox
entries; if that fails before its COMMIT (rolled back, so nothing of it happened), each
expiry runs on its own, so that only the one at fault fails. A COMMIT whose fate is
unknown is every expiry's outcome: retried, never run again at once."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine

from expiryd.database.inbox import Inbox
from expiryd.database.transaction import CommitUnknown, run_in_transaction
from expiryd.expiry import Expiry
from expiryd.handlers import one_by_one, run_one
from expiryd.outcomes import Ending, Result


class Transactional:
    """Gives a handler with `engine`, `inbox` and `work` the handler protocol."""

    engine: Engine
    inbox: Inbox | None

    def work(self, connection: Connection, expiries: list[Expiry]) -> list[Ending]:
        """The group's statements on `connection`, inside the transaction: one outcome
        per expiry, in order."""
        raise NotImplementedError

    def __call__(self, expiry: Expiry) -> Result:
        return run_one(self, expiry)

    def run_many(self, expiries: Sequence[Expiry]) -> list[Ending]:
        try:
            return run_in_transaction(self.engine, self.inbox, expiries, self.work)
        except CommitUnknown as exc:
            return [exc] * len(expiries)
        except Exception:
            if len(expiries) == 1:
                raise
            return one_by_one(self, expiries)
