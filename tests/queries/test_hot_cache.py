"""The hot-key cache's rules, fed messages in the format the projector and the sync script publish."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from ams.settings import Settings
from commands.keys import kafka_key, partition_for
from projections.redis_layout import Announcement
from queries.hot_cache import MAX_BYTES, Current, HotCache
from tests.support import extra_gateway, gateway_metric

PARTITIONS = 2
NOW = 1_700_000_000_000
GENERATIONS = {0: 0, 1: 0}


def announcement(partition: int, offset: int, previous: int, *keys: str, generation: int = 0) -> Announcement:
    """As the projector publishes it (projections/redis_kv.py APPLY_BATCH), for keys of tenant "t"."""
    head = f"{generation}:{partition}:{offset}:{previous}".encode()
    return Announcement.parse(head + Announcement.key_lines([("t", key) for key in keys]))


def sync(*states: tuple[int, int]) -> bytes:
    """As SYNC publishes it: per partition "<generation read>:<pointer>:<checkpoint>:<live>"."""
    return b" ".join(f"0:0:{checkpoint}:{live}".encode() for checkpoint, live in states)


def settled(checkpoints: tuple[int, int] = (4, 9), capacity: int = 100) -> HotCache:
    cache = HotCache(capacity, PARTITIONS)
    cache.synced(sync((checkpoints[0], 1), (checkpoints[1], 1)), GENERATIONS)
    assert cache.settled
    return cache


def home(key: str) -> int:
    return partition_for(kafka_key("t", key), PARTITIONS)


def value(key: str, version: int) -> Current:
    return Current(f'"{key}@{version}"'.encode(), version, home(key))


def read(cache: HotCache, key: str, version: int, checkpoint: int, expires: int = 0) -> None:
    """A read that missed, went to Redis and found ``version`` at ``checkpoint``, with nothing in between."""
    ticket = cache.ticket()
    cache.showed(home(key), checkpoint)
    cache.put(ticket, kafka_key("t", key), value(key, version), expires)


def get(cache: HotCache, key: str, positions: dict[int, int] | None = None, now: int = NOW) -> Current | None:
    return cache.get(kafka_key("t", key), positions or {}, now)


def test_a_value_read_from_redis_is_served_from_the_cache_until_a_batch_names_its_key() -> None:
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    assert get(cache, "a") == value("a", 3)
    cache.announced(announcement(p, cache.seen[p] + 1, cache.seen[p], "b"), True)  # another key: a stays
    assert get(cache, "a") == value("a", 3)
    cache.announced(announcement(p, cache.seen[p] + 1, cache.seen[p], "a", "b"), True)
    assert get(cache, "a") is None


def test_a_value_is_not_kept_when_a_batch_named_its_key_while_it_was_read() -> None:
    cache = settled()
    p = home("a")
    ticket = cache.ticket()  # the read begins; Redis answers version 3 at checkpoint seen[p]
    cache.announced(announcement(p, cache.seen[p] + 1, cache.seen[p], "a"), True)  # version 4 is applied meanwhile
    cache.put(ticket, kafka_key("t", "a"), value("a", 3), 0)
    assert get(cache, "a") is None  # version 3 is not kept: nothing could evict it any more


def test_a_batch_of_another_partition_naming_the_key_refuses_it_too() -> None:
    """An event logged in another partition than its key routes to (produced by another tool) still
    changes the key's record: its announcement moves the other partition, but names the key."""
    cache = settled()
    other = 1 - home("a")
    ticket = cache.ticket()
    cache.announced(announcement(other, cache.seen[other] + 1, cache.seen[other], "a"), True)
    cache.put(ticket, kafka_key("t", "a"), value("a", 3), 0)
    assert get(cache, "a") is None
    read(cache, "a", 4, checkpoint=cache.seen[home("a")])
    cache.announced(announcement(other, cache.seen[other] + 1, cache.seen[other], "a"), True)
    assert get(cache, "a") is None  # and evicts it once cached


def test_a_hit_is_refused_below_the_callers_token_until_the_cache_has_heard_of_it() -> None:
    cache = settled()
    p, other = home("a"), 1 - home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    token = {p: cache.seen[p] + 1}
    assert get(cache, "a", token) is None
    assert get(cache, "a", {other: cache.seen[other] + 1}) is None  # every partition the token names counts
    cache.announced(announcement(p, cache.seen[p] + 1, cache.seen[p], "b"), True)
    assert get(cache, "a", token) == value("a", 3)


def test_a_hit_is_refused_below_what_this_gateway_already_showed() -> None:
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    cache.showed(p, cache.seen[p] + 2)  # another read of the partition served Redis at a newer checkpoint
    assert get(cache, "a") is None  # its announcement may still be on its way, and might name "a"
    cache.announced(announcement(p, cache.seen[p] + 2, cache.seen[p], "b"), True)
    assert get(cache, "a") == value("a", 3)


def test_an_expired_value_is_never_served() -> None:
    cache = settled()
    read(cache, "a", 3, checkpoint=cache.seen[home("a")], expires=NOW + 1000)
    assert get(cache, "a", now=NOW + 999) == value("a", 3)
    assert get(cache, "a", now=NOW + 1000) is None
    assert len(cache) == 0


def test_a_new_subscription_drops_everything_until_the_next_sync() -> None:
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    cache.unsettle()  # what AppliedPositions does when the channel is (re)subscribed or lost
    assert get(cache, "a") is None
    before_sync = cache.ticket()
    read(cache, "a", 3, checkpoint=4)
    assert get(cache, "a") is None  # nothing goes in while where the partitions are is unknown
    cache.synced(sync((6, 1), (11, 1)), GENERATIONS)
    assert cache.seen == {0: 6, 1: 11}
    cache.put(before_sync, kafka_key("t", "a"), value("a", 3), 0)
    assert get(cache, "a") is None  # a read that began before the sync may hold an older value
    read(cache, "a", 4, checkpoint=cache.seen[p])
    assert get(cache, "a") == value("a", 4)


def test_a_generation_change_drops_everything_and_its_announcements_move_nothing() -> None:
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    seen = cache.seen[p]
    cache.announced(announcement(p, seen + 5, seen, "b", generation=1), False)  # a rebuild's or the new live one's
    assert cache.seen[p] == seen
    assert get(cache, "a") == value("a", 3)
    cache.unsettle([p])  # what AppliedPositions.refresh does when the partition's pointer moved
    assert get(cache, "a") is None
    moved = b" ".join(b"1:1:20:1" if partition == p else f"0:0:{cache.seen[partition]}:1".encode()
                      for partition in range(PARTITIONS))
    cache.synced(moved, GENERATIONS)  # read before the gateway followed the pointer: no use
    assert not cache.settled
    cache.synced(moved, {**GENERATIONS, p: 1})
    assert cache.settled and cache.seen[p] == 20


def test_a_batch_never_heard_of_drops_everything() -> None:
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    seen = cache.seen[p]
    cache.announced(announcement(p, seen + 3, seen + 1), True)  # the batch through seen + 1 was missed
    assert get(cache, "a") is None
    assert cache.seen[p] == seen + 3


def test_a_sync_past_what_was_announced_drops_everything() -> None:
    """Redis restored records from PostgreSQL (or a message was missed): the checkpoint moved unannounced."""
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    cache.synced(sync(*((cache.seen[q], 1) for q in range(PARTITIONS))), GENERATIONS)  # nothing new: kept
    assert get(cache, "a") == value("a", 3)
    cache.synced(sync(*((cache.seen[q] + (q == p), 1) for q in range(PARTITIONS))), GENERATIONS)
    assert get(cache, "a") is None


def test_a_partition_that_is_not_live_drops_everything_until_it_is_again() -> None:
    cache = settled()
    p = home("a")
    read(cache, "a", 3, checkpoint=cache.seen[p])
    states = [(cache.seen[q], int(q != p)) for q in range(PARTITIONS)]
    cache.synced(sync(*states), GENERATIONS)
    assert get(cache, "a") is None and not cache.settled
    read(cache, "a", 3, checkpoint=cache.seen.get(p, 4))
    assert get(cache, "a") is None
    cache.synced(sync(*((checkpoint, 1) for checkpoint, _ in states)), GENERATIONS)
    assert cache.settled


def test_the_cache_keeps_the_most_recently_used_keys_up_to_its_capacity() -> None:
    cache = settled(capacity=2)
    for key in ("a", "b"):
        read(cache, key, 1, checkpoint=cache.seen[home(key)])
    assert get(cache, "a") is not None  # now "b" is the least recently used
    read(cache, "c", 1, checkpoint=cache.seen[home("c")])
    assert len(cache) == 2
    assert get(cache, "b") is None
    assert get(cache, "a") is not None and get(cache, "c") is not None


def test_the_cache_holds_at_most_max_bytes_of_values() -> None:
    cache = settled(capacity=1000)
    big = b"x" * (1 << 20)  # one object: the cache counts its length each time, the test holds it once
    for i in range(MAX_BYTES // len(big) + 5):
        key = f"big/{i}"
        cache.put(cache.ticket(), kafka_key("t", key), Current(big, 1, home(key)), 0)
    assert len(cache) == MAX_BYTES // len(big)
    assert get(cache, "big/0") is None and get(cache, f"big/{len(cache) + 4}") is not None


# Against the running stack: the gateway's cache, through the API.

HITS = "ams_gateway_hot_cache_hits_total"


@pytest.mark.stack
async def test_a_hot_keys_reads_are_served_from_the_cache_and_see_every_write(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    assert (await api.put("/v1/kv/hot", json={"v": 1})).status_code == 200
    assert (await api.get("/v1/kv/hot")).json() == {"v": 1}  # read from Redis, and kept
    before = await gateway_metric(settings.gateway_url, HITS)
    for _ in range(20):
        assert (await api.get("/v1/kv/hot")).json() == {"v": 1}
    assert await gateway_metric(settings.gateway_url, HITS) >= before + 20
    # A strong write answered by this gateway is seen by its next read, token or not.
    for step in range(2, 12):
        assert (await api.put("/v1/kv/hot", json={"v": step})).status_code == 200
        assert (await api.get("/v1/kv/hot")).json() == {"v": step}
        assert (await api.get("/v1/kv/hot")).json() == {"v": step}
    assert (await api.delete("/v1/kv/hot")).status_code == 200
    assert (await api.get("/v1/kv/hot")).status_code == 404
    assert (await api.put("/v1/kv/hot", params={"ttl": "1"}, json={"v": "brief"})).status_code == 200
    assert (await api.get("/v1/kv/hot")).json() == {"v": "brief"}
    await asyncio.sleep(1.1)
    assert (await api.get("/v1/kv/hot")).status_code == 404  # expired: never served from the cache


@pytest.mark.stack
async def test_read_your_writes_through_the_cache_across_two_gateways(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    """A write through one gateway, read with its token through another that holds the key in its cache."""
    env = {"AMS_GATEWAY_INSTANCE": f"hot-cache-test-{uuid.uuid4().hex[:8]}"}
    async with extra_gateway(settings, tenant, env) as other:
        other_url = str(other.base_url).rstrip("/")
        before = await gateway_metric(other_url, HITS)
        for step in range(30):
            writer, reader = (api, other) if step % 2 == 0 else (other, api)
            for _ in range(3):  # the reader holds the key's current value in its cache
                await reader.get("/v1/kv/shared")
            if step % 5 == 4:
                written = await writer.delete("/v1/kv/shared")
                expected = None
            else:
                written = await writer.put("/v1/kv/shared", json={"step": step})
                expected = {"step": step}
            token = {"X-AMS-Min-Position": written.headers["X-AMS-Position"]}
            for _ in range(3):
                read = await reader.get("/v1/kv/shared", headers=token)
                assert (read.json() if read.status_code == 200 else None) == expected, (step, read.text)
        assert await gateway_metric(other_url, HITS) > before  # the reads did go through its cache
