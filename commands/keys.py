"""Names: the grammar of tenants, keys and streams, and how a key maps to its Kafka partition.

A **key** is 1 to 512 characters from ``A-Z a-z 0-9 _ - . : / @ = +``, made of ``/``-separated segments
that are neither empty nor ``.`` or ``..``; its last segment is not ``history`` (that path names a
key's history). A **tenant** is 1 to 64 characters from ``a-z 0-9 _ -``, starting with a letter or digit.
A **stream** name follows the key grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

MAX_KEY_LENGTH = 512
_KEY_CHARS = re.compile(r"[A-Za-z0-9_\-.:/@=+]+")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# Separates tenant and key in a Kafka record key. It is in neither grammar, so the pair is unambiguous.
SEPARATOR = "|"
# Marks a stream's Kafka key, so that a stream and a key of the same name never collide.
STREAM_MARK = "#"


class InvalidName(ValueError):
    """A tenant, key or stream name outside its grammar; the message says what is wrong."""


# Replays check the same keys over and over: a valid key is remembered (an invalid one raises each time). A set
# forgotten whole when full, rather than an LRU cache: a rebuild checks every event's key, and a set lookup
# costs a quarter of a cache hit when the keys are many.
_VALID_KEYS: set[str] = set()
VALID_KEYS_REMEMBERED = 1 << 18


def check_key(key: str, what: str = "key") -> str:
    if key in _VALID_KEYS:
        return key
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidName(f"{what} must be 1 to {MAX_KEY_LENGTH} characters long, got {len(key)}")
    if not _KEY_CHARS.fullmatch(key):
        bad = sorted({char for char in key if not _KEY_CHARS.fullmatch(char)})
        raise InvalidName(f"{what} {key!r} has characters outside A-Z a-z 0-9 _ - . : / @ = +: {''.join(bad)!r}")
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidName(f"{what} {key!r} has an empty, '.' or '..' segment between slashes")
    if len(segments) > 1 and segments[-1] == "history":
        raise InvalidName(f"{what} {key!r} ends in '/history', which names a key's history")
    if len(_VALID_KEYS) >= VALID_KEYS_REMEMBERED:
        _VALID_KEYS.clear()
    _VALID_KEYS.add(key)
    return key


@lru_cache(maxsize=1 << 12)
def check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise InvalidName(
            f"tenant {tenant!r} must be 1 to 64 characters from a-z 0-9 _ -, starting with a letter or digit"
        )
    return tenant


def check_prefix(prefix: str) -> str:
    """A key prefix: any leading part of a valid key (so it may end in '/' or be empty)."""
    if len(prefix) > MAX_KEY_LENGTH or (prefix and not _KEY_CHARS.fullmatch(prefix)):
        raise InvalidName(
            f"prefix {prefix!r} must be at most {MAX_KEY_LENGTH} characters from A-Z a-z 0-9 _ - . : / @ = +"
        )
    return prefix


def kafka_key(tenant: str, key: str) -> bytes:
    return f"{tenant}{SEPARATOR}{key}".encode()


def stream_key(tenant: str, stream: str) -> bytes:
    return f"{tenant}{SEPARATOR}{STREAM_MARK}{stream}".encode()


def partition_for(record_key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) picks for a record key."""
    return (murmur2(record_key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the log: the consistency token of a write, and a key's version is its offset."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


def format_positions(positions: dict[int, int]) -> str:
    """A consistency token naming several partitions: ``"0:15,3:42"``."""
    return ",".join(f"{partition}:{offset}" for partition, offset in sorted(positions.items()))


# Kafka numbers partitions with 32-bit and offsets with 64-bit signed integers: a position past them is no
# position of any log (and would overflow where it is passed on).
MAX_PARTITION = (1 << 31) - 1
MAX_OFFSET = (1 << 63) - 1
_MAX_DIGITS = len(str(MAX_OFFSET))


def parse_positions(token: str) -> dict[int, int]:
    """Parse ``"0:15,3:42"``; raise InvalidName with the reason when it is not a token."""
    positions: dict[int, int] = {}
    for part in filter(None, (piece.strip() for piece in token.split(","))):
        partition, colon, offset = part.partition(":")
        if not colon or not partition.isascii() or not partition.isdigit() or not offset.isascii() \
                or not offset.isdigit():
            raise InvalidName(f"consistency token {token[:100]!r} must look like '0:15,3:42' (partition:offset, ...)")
        if len(partition) > _MAX_DIGITS or len(offset) > _MAX_DIGITS or int(partition) > MAX_PARTITION \
                or int(offset) > MAX_OFFSET:
            raise InvalidName(f"consistency token {token[:100]!r} names a partition past {MAX_PARTITION} or an "
                              f"offset past {MAX_OFFSET}: no Kafka log has it")
        positions[int(partition)] = max(int(offset), positions.get(int(partition), -1))
    if len(positions) > 4096:
        raise InvalidName("consistency token names more than 4096 partitions")
    return positions
