import pytest

from expiryd.redis.keyfilter import KeyFilter
from expiryd.routes import Pattern, PatternError, Route, match_route


def route(pattern: str, handler: str = "sql") -> Route:
    return Route(name=pattern, pattern=Pattern.parse(pattern), handler=handler)


def test_seed_key_format_splits_order_number_and_flag() -> None:
    assert Pattern.parse("{order_sn}:{use_mysql}").match("SN1700000000T12345678:1") == {
        "order_sn": "SN1700000000T12345678",
        "use_mysql": "1",
    }


def test_prefix_pattern_captures_order_number() -> None:
    assert Pattern.parse("order:cancel:{order_sn}").match("order:cancel:SN123") == {
        "order_sn": "SN123"
    }


@pytest.mark.parametrize(
    "key",
    [
        "order:cancel:",
        "order:cancel:SN1:extra",
        "xorder:cancel:SN1",
        "order:cancel",
        "ORDER:cancel:1",
    ],
)
def test_whole_key_must_match_and_fields_exclude_colons(key: str) -> None:
    assert Pattern.parse("order:cancel:{order_sn}").match(key) is None


@pytest.mark.parametrize(
    "order_sn",
    ["订单-2024-001", "sn with spaces", "a.b*c?[d]", "x' OR '1'='1", "(.*)", "\\d+", "🙂"],
)
def test_odd_and_unicode_characters_are_literal_field_values(order_sn: str) -> None:
    assert Pattern.parse("order:cancel:{order_sn}").match(f"order:cancel:{order_sn}") == {
        "order_sn": order_sn
    }


def test_regex_characters_in_the_literal_part_are_literal() -> None:
    pattern = Pattern.parse("a.b+{id}")
    assert pattern.match("a.b+7") == {"id": "7"}
    assert pattern.match("axbb7") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("order:{}", "not a field name"),
        ("order:{1x}", "not a field name"),
        ("order:{a}:{a}", "twice"),
        ("order:{a}{b}", "directly"),
        ("order:{a", "unbalanced"),
        ("order:a}", "unbalanced"),
        ("order:{key}", "reserved"),
        ("order:{outcome}", "reserved"),
    ],
)
def test_bad_patterns_say_why(text: str, problem: str) -> None:
    with pytest.raises(PatternError, match=problem):
        Pattern.parse(text)


def test_first_matching_route_wins() -> None:
    routes = [route("order:cancel:{order_sn}", "orders.cancel"), route("order:{action}:{id}")]
    found = match_route(routes, "order:cancel:SN9")
    assert found is not None
    assert found.route.handler == "orders.cancel"
    found = match_route(routes, "order:refund:SN9")
    assert found is not None
    assert found.fields == {"action": "refund", "id": "SN9"}


def test_no_route_matches() -> None:
    assert match_route([route("order:cancel:{order_sn}")], "session:abc") is None


def test_matching_a_long_hostile_key_is_not_quadratic() -> None:
    pattern = Pattern.parse("{a}x{b}")
    assert pattern.match("x" * 1024 + ":") is None  # bounded by max_key_bytes in the worker


def test_in_a_cluster_only_keys_a_route_matches_are_expiryd_s_business() -> None:
    routes = [Route("cancel", Pattern.parse("order:cancel:{order_sn}"), "orders.cancel")]
    plain = KeyFilter(b"expiryd:", 1024, routes=routes)
    cluster = KeyFilter(b"expiryd:", 1024, routed_only=True, routes=routes)
    for keys in (plain, cluster):
        assert keys.owns(b"expiryd:{1.2}:deadlines")
        assert not keys.owns(b"order:cancel:SN1")
    assert not plain.owns(b"session:42") and cluster.owns(b"session:42")
    assert cluster.owns(b"\xff\xfe") and not cluster.watches(b"session:42")
    cluster.routes = [*routes, Route("s", Pattern.parse("session:{id}"), "orders.cancel")]
    assert not cluster.owns(b"session:42")
