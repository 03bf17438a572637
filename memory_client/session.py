"""Session consistency: the newest log position per partition that this client has seen.

Every write answers with its position (``X-AMS-Position: "p:o"``, a batch ``"p:o,p:o"``). The client keeps
the highest offset per partition and sends them all on each read as ``X-AMS-Min-Position``; the gateway
waits until its projection has applied them, so a client always reads its own writes, eventual ones too.
"""

from __future__ import annotations

import threading


def parse_token(token: str) -> dict[int, int]:
    """``"0:15,3:42"`` as ``{0: 15, 3: 42}`` (the highest offset wins per partition); ValueError if malformed."""
    positions: dict[int, int] = {}
    for part in filter(None, (piece.strip() for piece in token.split(","))):
        partition, colon, offset = part.partition(":")
        if not colon or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"consistency token {token!r} must look like '0:15,3:42' (partition:offset, ...)")
        positions[int(partition)] = max(int(offset), positions.get(int(partition), -1))
    return positions


def format_token(positions: dict[int, int]) -> str:
    """``{0: 15, 3: 42}`` as ``"0:15,3:42"``, partitions in order."""
    return ",".join(f"{partition}:{offset}" for partition, offset in sorted(positions.items()))


class Session:
    """The newest offset per partition; safe to share between threads (a sync client used by a pool)."""

    def __init__(self) -> None:
        self._positions: dict[int, int] = {}
        self._lock = threading.Lock()

    def observe(self, token: str) -> None:
        """Merge a consistency token; ValueError if it is not one."""
        positions = parse_token(token)
        with self._lock:
            for partition, offset in positions.items():
                if offset > self._positions.get(partition, -1):
                    self._positions[partition] = offset

    @property
    def token(self) -> str | None:
        """Everything seen so far as one token, or None before the first position."""
        with self._lock:
            return format_token(self._positions) if self._positions else None

    @property
    def positions(self) -> dict[int, int]:
        with self._lock:
            return dict(self._positions)

    def clear(self) -> None:
        with self._lock:
            self._positions.clear()
