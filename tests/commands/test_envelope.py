import orjson
import pytest

from commands.envelope import DELETE, PATCH, PUT, STREAM_APPEND, Event, MalformedEvent, decode, encode, uuid7


def event(**changes: object) -> Event:
    base = {"type": PUT, "tenant": "acme", "key": "session:1", "data": {"a": [1, 2.5, "x", None]}, "id": uuid7(),
            "ts": 1_700_000_000_000, "actor": "agent-7", "command_id": "c-1", "if_version": 3, "ttl_ms": 5000}
    return Event(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("original", [
    event(),
    event(type=DELETE, data=None, if_version=None, ttl_ms=None),
    event(type=PATCH, data={"a": None, "b": {"c": 1}}),
    event(type=STREAM_APPEND, key="steps", data=["anything", 1], command_id=None, if_version=None, ttl_ms=None),
    event(if_absent=True, if_version=None, command_id=None),
])
def test_round_trip(original: Event) -> None:
    assert decode(encode(original), default_tenant="default") == original


def test_uuid7_is_version_7_and_sorts_by_time() -> None:
    first, second = uuid7(), uuid7()
    assert first[14] == "7" and second[14] == "7"
    assert first[:13] <= second[:13]


def test_the_seed_documents_console_line_is_a_put_of_the_header_tenant_or_the_default() -> None:
    line = b'{"op":"set","key":"session:1234","value":{"step":3}}'
    assert decode(line, default_tenant="default", record_ts=42) == Event(
        PUT, "default", "session:1234", {"step": 3}, ts=42, actor="producer")
    assert decode(line, [("tenant", b"acme")], default_tenant="default").tenant == "acme"


@pytest.mark.parametrize(("raw", "reason"), [
    (None, "no value"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not an object"),
    (orjson.dumps({"v": 2, "type": PUT, "tenant": "a", "key": "k"}), "unknown envelope version 2"),
    (orjson.dumps({"v": 1, "type": "kv.explode", "tenant": "a", "key": "k"}), "unknown event type"),
    (orjson.dumps({"v": 1, "type": PUT, "tenant": "A B", "key": "k"}), "tenant"),
    (orjson.dumps({"v": 1, "type": PUT, "tenant": "a", "key": "bad key"}), "characters outside"),
    (orjson.dumps({"v": 1, "type": PUT, "tenant": "a", "key": "k", "ts": -1}), r"int` >= 0 - at `\$\.ts`"),
    (orjson.dumps({"v": 1, "type": PUT, "tenant": "a", "key": "k", "ts": True}), r"got `bool` - at `\$\.ts`"),
    (orjson.dumps({"v": 1, "type": PUT, "tenant": "a", "key": "k", "command_id": 7}), r"\$\.command_id"),
    (orjson.dumps({"v": 1, "type": PUT, "tenant": "a", "key": "k", "ttl_ms": 0}), r"int` >= 1 - at `\$\.ttl_ms`"),
    (orjson.dumps({"v": 1, "type": PUT, "key": "k"}), "missing required field `tenant`"),
    (orjson.dumps({"v": 1, "type": PATCH, "tenant": "a", "key": "k", "data": [1]}), "merge patch"),
    (orjson.dumps({"op": "explode", "key": "k"}), "unknown op"),
    (orjson.dumps({"op": "set", "key": 7}), "key must be a string"),
    # Poison that no projection could store: bad UTF-8 in a string, numbers out of range.
    (b'{"v":1,"type":"kv\xb9put","tenant":"a","key":"k"}', "not JSON"),
    (b'{"v":1,"type":"kv.put","tenant":"a","key":"k","data":"\xff"}', "not JSON"),
    (b'{"v":1,"type":"kv.put","tenant":"a","key":"k","data":[1e400]}', "not JSON"),
    (b'{"v":1,"type":"kv.put","tenant":"a","key":"k","ts":18446744073709551616}', r"got `float` - at `\$\.ts`"),
])
def test_malformed_input_is_rejected_with_the_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode(raw, default_tenant="default")


def test_numbers_at_the_edges_of_64_bits_and_long_digit_strings_are_events() -> None:
    for data in (18446744073709551615, -9223372036854775808, "1234567890123456789012345", 1.2345678901234567e300):
        assert decode(encode(event(data=data)), default_tenant="default").data == data


def test_a_longer_integer_is_read_as_a_float_as_the_gateway_reads_it() -> None:
    """No projection could write it back as an integer; the gateway's own reading of the command made it a float."""
    raw = (b'{"v":1,"type":"kv.put","tenant":"a","key":"k",'
           b'"data":{"n":123456789012345678901234567890,"m":[-9223372036854775809]}}')
    assert decode(raw, default_tenant="default").data == {"n": 1.2345678901234568e29, "m": [-9.223372036854776e18]}


def test_a_value_over_the_limit_is_malformed_whoever_produced_it() -> None:
    at_limit = encode(event(data="x" * 98))  # 100 bytes serialized
    assert decode(at_limit, default_tenant="default", max_value_bytes=100).data == "x" * 98
    with pytest.raises(MalformedEvent, match="101 bytes, over the 100-byte limit"):
        decode(encode(event(data="x" * 99)), default_tenant="default", max_value_bytes=100)
    legacy = orjson.dumps({"op": "set", "key": "k", "value": "x" * 200})
    with pytest.raises(MalformedEvent, match="over the 100-byte limit"):
        decode(legacy, default_tenant="default", max_value_bytes=100)
