"""Throwaway Redis topologies on loopback, in temp dirs: a Sentinel group (a primary, a
replica and three sentinels) and a Cluster (three primaries, a replica each).

The tests use the classes; `scripts/sentinel-up`, `scripts/cluster-up` and their `-down`
run this module to start one for a person, and to tear it down:

    python -m tests.support.topology sentinel|cluster up DIR
    python -m tests.support.topology sentinel|cluster down DIR
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
import redis.sentinel

from tests.support.servers import RedisServer, free_port, require, wait_until

SERVICE = "mymaster"


class Sentinel:
    """One redis-server in sentinel mode, watching `SERVICE`."""

    def __init__(self, workdir: Path, primary_port: int, down_after_ms: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "sentinel.conf"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"logfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.detached = False
        self.process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [require("redis-server"), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            start_new_session=self.detached,
        )
        wait_until(lambda: bool(self.client().ping()), 10, "redis-sentinel")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class SentinelSetup:
    """A primary, one replica of it, and three sentinels; `url` is expiryd's URL for it.
    `down_after_ms`: how long a silent primary may be before the sentinels fail it over
    by themselves; generous, since the tests fail over on purpose."""

    def __init__(
        self, workdir: Path, notify_flags: str = "Egx", down_after_ms: int = 30_000
    ) -> None:
        self.workdir = workdir
        self.primary = RedisServer(workdir / "primary", notify_flags)
        self.replica = RedisServer(
            workdir / "replica",
            notify_flags,
            extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)),
        )
        self.sentinels = [
            Sentinel(workdir / f"sentinel-{n}", self.primary.port, down_after_ms) for n in range(3)
        ]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def url(self, db: int = 15) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def start(self, detached: bool = False) -> None:
        for process in (*self.servers, *self.sentinels):
            process.detached = detached
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self._replicating(self.replica), 20, "the replica")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_agree, 30, "the sentinels")

    def stop(self) -> None:
        for process in (*self.sentinels, *self.servers):
            process.stop()

    def _replicating(self, server: RedisServer) -> bool:
        info = server.client().info("replication")
        return bool(info.get("master_link_status") == "up")

    def _sentinels_agree(self) -> bool:
        """Each sentinel knows the primary, its replica and the two other sentinels."""
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(SERVICE)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return True

    def primary_address(self) -> tuple[str, int]:
        reply = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else host), int(port)

    def server_at(self, address: tuple[str, int]) -> RedisServer:
        return next(s for s in self.servers if s.port == address[1])

    def client(self, db: int = 15) -> redis.Redis:
        """A client of whichever node is the primary now."""
        sentinel = redis.sentinel.Sentinel(
            [("127.0.0.1", s.port) for s in self.sentinels], socket_timeout=5
        )
        return sentinel.master_for(SERVICE, db=db, socket_timeout=5)

    def failover(self, timeout: float = 30) -> tuple[str, int]:
        """`SENTINEL FAILOVER`, then wait until every sentinel names the new primary and
        it is writable; the new primary's address."""
        old = self.primary_address()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)

        def switched() -> bool:
            for sentinel in self.sentinels:
                _host, port = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
                if int(port) == old[1]:
                    return False
            new = self.server_at(self.primary_address())
            return bool(new.client().execute_command("ROLE")[0] == b"master")

        wait_until(switched, timeout, "the failover")
        return self.primary_address()

    def wait_demoted(self, address: tuple[str, int], timeout: float = 30) -> None:
        """Until the node at `address` replicates from the new primary."""
        server = self.server_at(address)
        wait_until(lambda: self._replicating(server), timeout, "the old primary's demotion")


class ClusterSetup:
    """A Redis Cluster of `primaries` primaries, each with one replica; `url` is expiryd's
    URL for it. `node_timeout_ms`: how long a silent node may be before the others fail
    it over; generous, since the tests fail over on purpose."""

    def __init__(
        self,
        workdir: Path,
        primaries: int = 3,
        notify_flags: str = "Egx",
        node_timeout_ms: int = 15_000,
    ) -> None:
        self.workdir = workdir
        self.notify_flags = notify_flags
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [self._node(n) for n in range(primaries * 2)]
        self.replicas_per_primary = 1

    def _node(self, n: int) -> RedisServer:
        node = RedisServer(
            self.workdir / f"node-{n}",
            self.notify_flags,
            extra_args=(
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(self.node_timeout_ms)),
                # A replica always takes over from a failed primary, however long ago
                # they last spoke (a test's idle cluster may not have for a while).
                *("--cluster-replica-validity-factor", "0"),
                *("--repl-diskless-sync-delay", "0"),
            ),
        )
        node.port = _cluster_port()
        return node

    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:3])
        return f"redis+cluster://{hosts}"

    def start(self, detached: bool = False) -> None:
        for node in self.nodes:
            node.detached = detached
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                *(require("redis-cli"), "--cluster", "create", *addresses),
                *("--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._settled, 60, "the cluster")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _settled(self) -> bool:
        """Every node says the cluster is ok and knows every other node."""
        for node in self.nodes:
            info = node.client(0).execute_command("CLUSTER", "INFO").decode()
            fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
            if fields["cluster_state"] != "ok" or int(fields["cluster_known_nodes"]) != len(
                self.nodes
            ):
                return False
        # And every primary with slots has its replica in the shards' description, and
        # that replica has had its first full copy.
        shards = self.nodes[0].client(0).execute_command("CLUSTER", "SHARDS")
        if not all(len(s[b"nodes"]) > self.replicas_per_primary for s in shards if s[b"slots"]):
            return False
        replicas = [n for n in self.nodes if n.client(0).execute_command("ROLE")[0] == b"slave"]
        return all(
            n.client(0).info("replication").get("master_link_status") == "up" for n in replicas
        )

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def node_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.client(0).execute_command("ROLE")[0] == b"master"]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.nodes:
            role = node.client(0).execute_command("ROLE")
            if role[0] == b"slave" and int(role[2]) == primary.port:
                return node
        raise LookupError(f"no replica of {primary.port}")

    def failover(self, primary: RedisServer, timeout: float = 30) -> RedisServer:
        """`CLUSTER FAILOVER` on `primary`'s replica; the replica, once it is primary and
        `primary` replicates from it."""
        replica = self.replica_of(primary)
        replica.client(0).execute_command("CLUSTER", "FAILOVER")

        def switched() -> bool:
            role = primary.client(0).execute_command("ROLE")
            return bool(role[0] == b"slave" and int(role[2]) == replica.port)

        wait_until(switched, timeout, "the cluster failover")
        wait_until(self._settled, timeout, "the cluster")
        return replica

    def add_primary(self) -> RedisServer:
        """A new, empty primary joined to the cluster (no slots yet)."""
        node = self._node(len(self.nodes))
        node.start()
        self.nodes.append(node)
        self._cli("--cluster", "add-node", f"127.0.0.1:{node.port}", self._entry())
        wait_until(self._settled, 60, "the cluster with the new node")
        return node

    def move_slots(self, to: RedisServer, count: int) -> None:
        """`redis-cli --cluster reshard`: `count` slots from the other primaries to `to`."""
        node_id = to.client(0).execute_command("CLUSTER", "MYID").decode()
        self._cli(
            *("--cluster", "reshard", self._entry(), "--cluster-from", "all"),
            *("--cluster-to", node_id, "--cluster-slots", str(count), "--cluster-yes"),
        )

    def _entry(self) -> str:
        return f"127.0.0.1:{self.nodes[0].port}"

    def _cli(self, *args: str) -> None:
        subprocess.run([require("redis-cli"), *args], check=True, capture_output=True, timeout=120)


def _cluster_port() -> int:
    """A free port with its cluster bus port (10,000 higher) free too."""
    for _ in range(100):
        port = random.randrange(20_000, 50_000)
        if _free(port) and _free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _up(kind: str, workdir: Path) -> None:
    processes: list[RedisServer | Sentinel]
    if kind == "sentinel":
        group = SentinelSetup(workdir)
        group.start(detached=True)
        processes, url = [*group.servers, *group.sentinels], group.url(0)
        nodes = f"primary 127.0.0.1:{group.primary.port}, replica 127.0.0.1:{group.replica.port}"
    else:
        cluster = ClusterSetup(workdir)
        cluster.start(detached=True)
        processes, url = list(cluster.nodes), cluster.url()
        nodes = ", ".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
    state = {"url": url, "pids": [p.process.pid for p in processes if p.process]}
    (workdir / "state.json").write_text(json.dumps(state))
    print(f"Redis {kind} up in {workdir}")
    print(f"  nodes: {nodes}")
    print(f"  expiryd URL: {url}")


def _down(workdir: Path) -> None:
    state_file = workdir / "state.json"
    if not state_file.exists():
        print(f"nothing is up in {workdir}", file=sys.stderr)
        return
    pids = json.loads(state_file.read_text())["pids"]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    state_file.unlink()
    print(f"Redis in {workdir} stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("sentinel", "cluster") or argv[1] not in ("up", "down"):
        usage = "usage: python -m tests.support.topology sentinel|cluster up|down DIR"
        print(usage, file=sys.stderr)
        return 2
    workdir = Path(argv[2])
    workdir.mkdir(parents=True, exist_ok=True)
    if argv[1] == "up":
        _up(argv[0], workdir)
    else:
        _down(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
