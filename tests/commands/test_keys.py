import pytest

from commands import keys
from commands.keys import InvalidName, check_key, check_tenant, format_positions, parse_positions, partition_for


@pytest.mark.parametrize("key", ["session:1234", "a", "agents/7/facts/likes", "x@y=z+1.2_3-4", "k" * 512])
def test_valid_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 513, "has space", "a//b", "a/../b", "./a", "/a", "a/", "notes/history",
                                 "tenant|key", "#stream", "üñí", "a%2Fb", "*"])
def test_invalid_keys_say_why(key: str) -> None:
    with pytest.raises(InvalidName, match="key"):
        check_key(key)


def test_an_invalid_key_is_refused_every_time_and_the_valid_ones_remembered_are_bounded() -> None:
    for _ in range(2):
        with pytest.raises(InvalidName):
            check_key("a//b")
        with pytest.raises(InvalidName, match="stream"):
            check_key("a//b", "stream")
    for number in range(keys.VALID_KEYS_REMEMBERED + 10):
        assert check_key(f"k{number}") == f"k{number}"
    assert len(keys._VALID_KEYS) <= keys.VALID_KEYS_REMEMBERED
    assert "a//b" not in keys._VALID_KEYS


@pytest.mark.parametrize("tenant", ["", "A", "-a", "a" * 65, "a:b", "a|b"])
def test_invalid_tenants(tenant: str) -> None:
    with pytest.raises(InvalidName, match="tenant"):
        check_tenant(tenant)


def test_partitioning_matches_kafkas_default_partitioner() -> None:
    # Kafka's UtilsTest.testMurmur2 vectors (Java ints), through Utils.toPositive(...) % partitions.
    java_murmur2 = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536, "abc": 479470107}
    for key, hashed in java_murmur2.items():
        assert partition_for(key.encode(), 6) == (hashed & 0x7FFFFFFF) % 6
    assert len({partition_for(str(i).encode(), 6) for i in range(1000)}) == 6


def test_consistency_tokens_round_trip_and_keep_the_highest_offset() -> None:
    assert parse_positions("0:15, 3:42,0:9") == {0: 15, 3: 42}
    assert format_positions({3: 42, 0: 15}) == "0:15,3:42"
    for bad in ("x", "1:", ":3", "1:-2", "1:2:3"):
        with pytest.raises(InvalidName):
            parse_positions(bad)
