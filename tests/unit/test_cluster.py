from redis.crc import key_slot

from expiryd.redact import redact_url
from expiryd.redis.cluster import (
    ClusterSeeds,
    Primary,
    Topology,
    choose_tags,
    reshape,
    tag_for_slot,
)
from expiryd.redis.connections import RedisTarget


def primary(node: str, port: int, *ranges: tuple[int, int]) -> Primary:
    return Primary(node, ("10.0.0.1", port), tuple(ranges), ())


A = primary("a", 7001, (0, 5460))
B = primary("b", 7002, (5461, 10922))
C = primary("c", 7003, (10923, 16383))


def test_a_cluster_url_names_seeds_and_credentials_and_no_db() -> None:
    url = "rediss+cluster://app:n0de-pw@10.0.0.1:7001,[::1]:7002,node-3?ssl_ca_certs=/ca.pem"
    target = RedisTarget.from_url(url)
    assert target.cluster is not None and target.db == 0
    assert target.cluster.seeds == (("10.0.0.1", 7001), ("::1", 7002), ("node-3", 6379))
    assert target.cluster.node_options["password"] == "n0de-pw"
    assert target.cluster.node_options["ssl"] is True
    assert "n0de-pw" not in redact_url(url) and "n0de-pw" not in repr(target)
    node = target.node_target(("10.0.0.2", 7004))
    assert (node.host, node.port, node.db, node.cluster) == ("10.0.0.2", 7004, 0, None)
    assert "ssl_ca_certs=/ca.pem" in node.url and node.url.startswith("rediss://app:")


def test_a_primary_s_tag_hashes_to_its_highest_slot() -> None:
    for slot in (0, 5460, 16383):
        assert key_slot(f"expiryd:{{{tag_for_slot(slot)}}}:jobs".encode()) == slot
    assert A.tag == tag_for_slot(5460)
    split = primary("d", 7004, (0, 10), (200, 300))
    assert split.tag == tag_for_slot(300) and split.owns(5) and not split.owns(100)


def test_the_topology_skips_primaries_without_slots_or_health() -> None:
    def node(port: int, role: bytes, health: bytes = b"online") -> dict[bytes, object]:
        return {b"id": f"n{port}".encode(), b"ip": b"10.0.0.1", b"port": port,
                b"role": role, b"health": health}  # fmt: skip

    topology = Topology.parse(
        [
            {b"slots": [0, 99], b"nodes": [node(1, b"master"), node(2, b"replica")]},
            {b"slots": [], b"nodes": [node(3, b"master")]},
            {b"slots": [100, 16383], b"nodes": [node(4, b"master", b"fail")]},
        ]
    )
    assert [p.address for p in topology.primaries] == [("10.0.0.1", 1)]
    assert topology.primaries[0].replicas == (("10.0.0.1", 2),)
    assert topology.owner(50) is topology.primaries[0] and topology.owner(100) is None


def test_reshape_moves_a_failed_over_shard_starts_new_ones_and_retires_moved_tags() -> None:
    shards = {A.tag: A.address, B.tag: B.address, C.tag: C.address}
    assert not reshape(shards, Topology((A, B, C)))
    promoted = Primary("a2", ("10.0.0.9", 7009), A.slots, ())
    assert reshape(shards, Topology((promoted, B, C))).move == (promoted,)
    # C's top slots moved to a new primary D, and C's state with them: the shard of
    # that tag moves to D, and C gets a new tag and shard.
    d = primary("d", 7004, (16000, 16383))
    c = primary("c", 7003, (10923, 15999))
    plan = reshape(shards, Topology((A, B, c, d)))
    assert plan.move == (d,) and plan.start == (c,) and not plan.retire
    # B's highest slot moved to C: B's old tag is C's slot now, not C's tag: retired.
    b = primary("b", 7002, (5461, 10921))
    c2 = primary("c", 7003, (10922, 16383))
    plan = reshape(shards, Topology((A, b, c2)))
    assert plan.retire == (B.tag,) and plan.start == (b,) and not plan.move
    # A failed with no replica promoted yet: its slots are served by nobody, its shard stays.
    assert not reshape(shards, Topology((B, C)))


def test_a_primary_keeps_its_tag_while_it_owns_the_tag_s_slot() -> None:
    assert choose_tags(Topology((A, B, C)), {}) == {"a": A.tag, "b": B.tag, "c": C.tag}
    kept = {"a": A.tag, "b": B.tag, "c": C.tag}
    # A new primary filled slot by slot keeps the tag chosen when it had one slot.
    first = primary("n", 7004, (0, 0))
    kept["n"] = choose_tags(Topology((first,)), kept)["n"]
    assert kept["n"] == tag_for_slot(0)
    a, filled = primary("a", 7001, (700, 5460)), primary("n", 7004, (0, 699))
    assert choose_tags(Topology((a, filled, B, C)), kept)["n"] == tag_for_slot(0)
    # A replica promoted by a failover takes the tag of the primary it replaced.
    promoted = Primary("a2", ("10.0.0.9", 7009), A.slots, ())
    assert choose_tags(Topology((promoted, B, C)), kept)["a2"] == A.tag
    # C's highest slot moved to D: D takes C's tag (and the state in its slot), C another.
    d, c = primary("d", 7005, (16000, 16383)), primary("c", 7003, (10923, 15999))
    tags = choose_tags(Topology((A, B, c, d)), kept)
    assert tags["d"] == C.tag and tags["c"] == tag_for_slot(15999)


def test_seeds_are_asked_in_turn_for_the_topology() -> None:
    seeds = ClusterSeeds.from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    try:
        seeds.topology()
    except Exception as exc:
        assert "127.0.0.1:1" in str(exc) and "127.0.0.1:2" in str(exc)
    else:
        raise AssertionError("no node answers, yet a topology came back")
