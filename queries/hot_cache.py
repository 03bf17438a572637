"""The gateway's hot-key cache: the current values of the keys read most recently, per namespace, so that a
hot key's read does not go to Redis. Its namespace's `queries.positions.AppliedPositions` feeds it.

It is kept correct by what the projector announces after each batch (`projections.redis_layout.
Announcement`): the position the batch reached and every key it changed, in order on one subscription.

- ``seen[p]``: every announcement of partition ``p`` up to offset ``seen[p]`` has been processed, and each
  evicted the keys it named. So an entry holds its key's value as of ``seen`` on every partition: a write
  before the entry was read is in it; a write after was announced after the read, and evicted it.
- An entry read from Redis goes in only if nothing was reset and no announcement processed since the read
  began named its key (the `Ticket` taken when it began says). Comparing ``seen[p]`` with the checkpoint
  the read saw would not do: an event logged in another partition than its key routes to (produced by
  another tool) changes the record, but moves the other partition's position.
- A hit is served only if ``seen[q]`` has reached the caller's token on every partition ``q`` it names, and
  ``seen[home]`` has reached ``shown[home]``, the highest checkpoint at which this gateway served the
  partition from Redis or PostgreSQL: a read never returns a value older than the caller's token, or than
  what this gateway already showed.
- Expired values are never served, deleted and missing keys never cached.
- ``seen`` is not known after the subscription is (re)made (messages may have been missed), nor for a
  partition that changed generation (a rebuild switched) or is not live (Redis lost data, a restore is
  under way); then everything is dropped, and until ``seen`` is known again for every partition nothing goes
  in. It is learned from a *sync* (`SYNC`): one script reads each partition's generation pointer,
  checkpoint and live marker and publishes them on this gateway's own channel of the same subscription, so
  when that message arrives, every announcement published before it has been processed.
- A gap drops everything too: a batch that does not start where the last one heard ended, or a sync's
  checkpoint past what was announced (a message missed, or records restored from PostgreSQL).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from projections.redis_layout import Announcement, RedisLayout

HITS = Counter("ams_gateway_hot_cache_hits", "Current-value reads served from the gateway's hot-key cache")
MISSES = Counter("ams_gateway_hot_cache_misses",
                 "Current-value reads the hot-key cache could not serve (not cached, or not known to be fresh enough)")
SIZE = Gauge("ams_gateway_hot_cache_keys", "Values held in the hot-key caches of the gateway processes' namespaces",
             multiprocess_mode="livesum")
# The values' bytes each namespace's cache holds at most, whatever AMS_HOT_CACHE_KEYS says (values go up to
# AMS_MAX_VALUE_BYTES, 1 MiB by default: 10,000 of them would be 10 GB).
MAX_BYTES = 64 << 20
# Keys named by recent announcements, remembered to refuse the values of reads that began before (forgotten
# all at once when full: then every read in flight is refused, which costs a Redis read next time, no more).
NAMED_KEYS = 1 << 14

# KEYS: for each partition, its generation pointer, and its checkpoint and live marker in the generation
# the gateway reads (ARGV[1 + partition]). ARGV[1]: the channel. Publishes, per partition and separated by
# spaces, "<generation read>:<pointer>:<checkpoint>:<live 0/1>".
SYNC = """
local states = {}
for i = 1, #KEYS, 3 do
  local partition = #states + 1
  states[partition] = ARGV[partition + 1] .. ':' .. (redis.call('GET', KEYS[i]) or '0') .. ':'
    .. (redis.call('GET', KEYS[i + 1]) or '-1') .. ':' .. redis.call('EXISTS', KEYS[i + 2])
end
redis.call('PUBLISH', ARGV[1], table.concat(states, ' '))
"""


def sync_call(layout: RedisLayout, generations: Mapping[int, int], channel: str) -> tuple[list[str], list[str | int]]:
    """SYNC's keys and arguments, for the generations the gateway reads (partition: generation)."""
    ordered = sorted(generations.items())
    keys = [name for partition, generation in ordered
            for name in (layout.pointer(partition), layout.at(generation).checkpoint(partition),
                         layout.at(generation).live(partition))]
    return keys, [channel, *(generation for _, generation in ordered)]


@dataclass(frozen=True, slots=True)
class Current:
    """A key's current value, as a read serves it."""

    value: bytes  # the JSON exactly as written
    version: int
    partition: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken when a read of Redis begins: whether its value may go in is judged against it."""

    epoch: int  # resets so far
    heard: int  # announcements processed so far


class HotCache:
    def __init__(self, capacity: int, partitions: int) -> None:
        self.capacity, self.partitions = capacity, partitions
        self.seen: dict[int, int] = {}  # only partitions whose position is known
        self.shown: list[int] = [-1] * partitions
        self.epoch = 0
        self._entries: OrderedDict[bytes, tuple[Current, int]] = OrderedDict()  # name -> (current, expires)
        self._bytes = 0  # of the values held
        self._heard = 0
        self._named: dict[bytes, int] = {}  # key -> `_heard` when an announcement last named it
        self._named_floor = 0  # what a key forgotten from `_named` counts as

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def settled(self) -> bool:
        return len(self.seen) == self.partitions

    def get(self, name: bytes, positions: Mapping[int, int], now: int) -> Current | None:
        """The cached value of ``name`` (``b"tenant|key"``) if it may be served to a caller holding
        ``positions``; None (a miss) if the read must go to Redis."""
        entry = self._entries.get(name)
        if entry is None or not self._fresh(entry[0].partition, positions):
            MISSES.inc()
            return None
        current, expires = entry
        if expires and expires <= now:
            self._evict(name)
            MISSES.inc()
            return None
        self._entries.move_to_end(name)
        HITS.inc()
        return current

    def _fresh(self, home: int, positions: Mapping[int, int]) -> bool:
        seen = self.seen
        if seen.get(home, -1) < self.shown[home]:
            return False
        return all(seen.get(partition, -1) >= offset for partition, offset in positions.items())

    def ticket(self) -> Ticket:
        return Ticket(self.epoch, self._heard)

    def put(self, ticket: Ticket, name: bytes, current: Current, expires: int) -> None:
        """Keep a value just read from a live Redis partition, unless something may have changed it since
        the read began (see the module's docstring)."""
        if ticket.epoch != self.epoch or not self.settled or self._named.get(name, self._named_floor) > ticket.heard:
            return
        self._evict(name)
        self._entries[name] = (current, expires)
        self._bytes += len(current.value)
        SIZE.inc()
        while len(self._entries) > self.capacity or self._bytes > MAX_BYTES:
            self._evict(next(iter(self._entries)))  # the least recently used

    def showed(self, partition: int, checkpoint: int) -> None:
        """A read was served from a projection that had applied ``partition`` up to ``checkpoint``."""
        if checkpoint > self.shown[partition]:
            self.shown[partition] = checkpoint

    def announced(self, announcement: Announcement, current_generation: bool) -> None:
        """Process an announcement of the applied channel (``current_generation``: of the generation the
        gateway reads; another's moves no position, but its keys are evicted all the same)."""
        self._heard += 1
        heard, named = self._heard, self._named
        if len(named) + len(announcement.keys) > NAMED_KEYS:
            named.clear()
            self._named_floor = heard
        for name in announcement.keys:
            named[name] = heard
            self._evict(name)
        seen = self.seen.get(announcement.partition)
        if not current_generation or seen is None:
            return  # the next sync says where the partition is
        if announcement.previous > seen:
            self._reset()  # a batch this cache never heard of changed keys it cannot name
        if announcement.offset > seen:
            self.seen[announcement.partition] = announcement.offset

    def synced(self, message: bytes, generations: Mapping[int, int]) -> None:
        """Process a SYNC message, given the generation the gateway reads now in each partition."""
        was_settled = self.settled
        for partition, state in enumerate(message.split()):
            read_in, pointer, checkpoint, live = map(int, state.split(b":"))
            if read_in != pointer or read_in != generations.get(partition):
                continue  # read in a generation the gateway is leaving; the next sync reads the new one
            if not live:
                self.unsettle([partition])
            elif partition not in self.seen:
                self.seen[partition] = checkpoint
            elif checkpoint > self.seen[partition]:
                self._reset()  # moved past what was announced
                self.seen[partition] = checkpoint
        if self.settled and not was_settled:
            self._reset()  # a read that began before now may hold a value older than what is known now

    def unsettle(self, partitions: Iterable[int] | None = None) -> None:
        """Drop everything, and forget where ``partitions`` (default: all) are until the next sync."""
        self._reset()
        for partition in range(self.partitions) if partitions is None else partitions:
            self.seen.pop(partition, None)

    def _reset(self) -> None:
        self.epoch += 1
        SIZE.dec(len(self._entries))
        self._entries.clear()
        self._bytes = 0

    def _evict(self, name: bytes) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= len(entry[0].value)
            SIZE.dec()
