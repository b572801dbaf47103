"""A worker's lease on the batch in hand, and the component that renews it.

The renewer renews the lease every third of it, from a thread of its own, while the
batch runs: a lease lapses only when its worker is gone, however long one handler call
takes. (A statement that hangs is ended by the driver's timeouts.) Redis may say some
jobs are held no more: they lapsed (Redis was out of reach for longer than the lease)
and went to another worker, so the batch stops after the group it runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from expiryd.component import Component
from expiryd.logs import describe_error, get_logger
from expiryd.redis.queue import JobQueue


@dataclass
class Lease:
    """The batch in hand, shared by its worker and its renewer: the jobs still held
    (changed and renewed under `lock`), whether Redis said some are ours no longer, and
    the group running now (route, jobs, since when)."""

    held: set[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    lost: bool = False
    running: tuple[str, int, float] | None = None
    slow_warnings: int = 0

    def count_held(self, ours: int, expected: int) -> None:
        """Redis said `ours` of `expected` jobs are still held: once fewer, it is lost."""
        if ours < expected and not self.lost:
            self.lost = True
            get_logger().warning("lease.lost", jobs=expected - ours, held=ours)


class LeaseRenewer(Component):
    def __init__(self, *, queue: JobQueue, token: str, lease: Lease, lease_seconds: float) -> None:
        super().__init__(name="lease-renewer")
        self.queue = queue
        self.token = token
        self.lease = lease
        self.lease_seconds = lease_seconds
        self._log = get_logger()

    def run(self) -> None:
        every = self.lease_seconds / 3
        wait = every
        while not self.halt.wait(wait):
            wait = every
            try:
                self._renew()
                self._warn_if_slow()
            except Exception as exc:  # Redis away for now: try again soon, not a beat later
                wait = min(1.0, every)
                error = describe_error(exc)
                self._log.warning("lease.not_renewed", jobs=len(self.lease.held), error=error)
            except BaseException:
                # Nobody renews the lease now: the batch stops after the group it runs.
                self.lease.lost = True
                raise

    def _renew(self) -> None:
        """Renew the jobs still held (and find out whether they still are)."""
        lease = self.lease
        with lease.lock:
            held = list(lease.held)
            renewed = self.queue.extend(self.token, held, int(self.lease_seconds * 1000))
        lease.count_held(renewed, len(held))

    def _warn_if_slow(self) -> None:
        """A group that runs past its lease (a handler that does not return) is said once
        a lease: its jobs stay leased, and nobody else runs them, for as long as it runs."""
        running = self.lease.running
        if running is None:
            return
        route, jobs, started = running
        late = time.monotonic() - started
        if late >= self.lease_seconds * (self.lease.slow_warnings + 1):
            self.lease.slow_warnings += 1
            self._log.warning("batch.slow", route=route, jobs=jobs, running_s=round(late, 1))
