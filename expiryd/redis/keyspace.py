"""The names of everything expiryd keeps in Redis, built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keyspace:
    prefix: str
    db: int
    tag: str = ""
    """In a cluster, the hash tag that puts all these keys in one slot."""

    @classmethod
    def tagged(cls, prefix: str, tag: str) -> Keyspace:
        """A cluster shard's keyspace: all its keys in the one slot of `tag` (DB 0)."""
        return cls(f"{prefix}{{{tag}}}:", 0, tag)

    @property
    def deadlines(self) -> str:
        """ZSET: watched key -> deadline (ms since the epoch, Redis clock) while it lives."""
        return f"{self.prefix}deadlines"

    @property
    def gone(self) -> str:
        """ZSET: key found gone at or after its deadline -> when it was found (ms)."""
        return f"{self.prefix}gone"

    @property
    def gone_deadlines(self) -> str:
        """HASH: key in `gone` -> the deadline it had."""
        return f"{self.prefix}gone:deadlines"

    @property
    def values(self) -> str:
        """HASH: key -> its value when its TTL was set (with capture_values)."""
        return f"{self.prefix}values"

    @property
    def claimed(self) -> str:
        """ZSET: key -> when an expiry of it was last claimed (ms), kept for a while so
        that an event no daemon recorded a deadline for is claimed once by all daemons."""
        return f"{self.prefix}claimed"

    @property
    def ready(self) -> str:
        """ZSET: job id -> when it may run (ms); retries wait here with a later score."""
        return f"{self.prefix}jobs:ready"

    @property
    def leases(self) -> str:
        """ZSET: job id -> when the lease of the worker running it lapses (ms)."""
        return f"{self.prefix}jobs:leases"

    @property
    def dead(self) -> str:
        """ZSET: job id -> when it was dead-lettered (ms)."""
        return f"{self.prefix}jobs:dead"

    @property
    def jobs(self) -> str:
        """HASH: job id -> the job's record, packed (see `lua/jobs.lua`)."""
        return f"{self.prefix}jobs"

    @property
    def owners(self) -> str:
        """HASH: job id -> the token of the worker holding its lease, and its mark."""
        return f"{self.prefix}jobs:owners"

    @property
    def layout(self) -> str:
        """STRING: the layout of the jobs above, once jobs of an earlier one were moved in."""
        return f"{self.prefix}jobs:layout"

    def legacy_job(self, job_id: str) -> str:
        """HASH: a job as expiryd queued it before jobs were records of `jobs`."""
        return f"{self.prefix}job:{job_id}"

    @property
    def daemons(self) -> str:
        """HASH: daemon id -> its last heartbeat (JSON), which says until when it counts
        as alive (see `registry`)."""
        return f"{self.prefix}daemons"

    @property
    def shard_tags(self) -> str:
        """SET, in a cluster: the hash tag of every shard with state in it (see `shards`)."""
        return f"{self.prefix}shards"

    @property
    def shard_nodes(self) -> str:
        """HASH, in a cluster: primary's node id -> the hash tag of its shard (see
        `shard_tags`)."""
        return f"{self.prefix}shards:nodes"

    @property
    def sweep_channel(self) -> str:
        """Pub/sub channel of the sweep markers (see `ledger`)."""
        return f"{self.prefix}sweep@{self.db}"
