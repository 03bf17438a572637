"""One rebuild of a projection at a time, whoever starts it: a lock in Redis per projection.

Two gateways, or a gateway and an operator's CLI, on one host or several, must never run two rebuilds of the
same projection (each would build, switch and drop generations under the other). Each projection's lock is
a Redis key holding its owner (``<token> <host> <pid>``), with an expiry that the owner keeps pushing back
while it runs; a rebuild of ``all`` takes the three locks in one step. The admin endpoint takes the lock,
then starts the rebuild process with the lock's token, and the process adopts it (its own pid, from then on).

An owner that dies cannot release its lock: on another host the lock expires (``LOCK_SECONDS``); on the same
host, whoever finds the owner's process gone takes the lock over at once, so a killed rebuild can be resumed
straight away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis

from ams.tasks import cancel_all
from projections.redis_layout import RedisLayout

log = logging.getLogger("ams.rebuild")

LOCK_SECONDS = 30.0
REFRESH_SECONDS = 5.0

# KEYS: the locks. ARGV: the owner, the expiry (ms), then owners found dead that may be replaced.
# Returns 0 when every lock is taken, else the 1-based index of a lock held by someone else and its owner.
ACQUIRE = """
local replaceable = {}
for i = 3, #ARGV do replaceable[ARGV[i]] = true end
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner and not replaceable[owner] then return {i, owner} end
end
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return 0
"""
# KEYS: the locks. ARGV: the token, the owner to write, the expiry (ms). Refreshes (or adopts) the locks whose
# owner has the token; returns how many it holds.
REFRESH = """
local held = 0
for _, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner and string.sub(owner, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
    redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
    held = held + 1
  end
end
return held
"""
# KEYS: the locks. ARGV: the token. Deletes the locks whose owner has the token.
RELEASE = """
for _, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner and string.sub(owner, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', key) end
end
return 0
"""


class RebuildRunning(RuntimeError):
    """Another rebuild of the projection holds its lock."""

    @classmethod
    def held_by(cls, projection: str, owner: str) -> RebuildRunning:
        _, host, pid = _parts(owner)
        return cls(f"a {projection} rebuild is already running (process {pid} on {host}); wait for it to finish "
                   f"(GET /v1/admin/rebuilds/{projection} shows its progress)")


def _parts(owner: str) -> tuple[str, str, str]:
    """(token, host, pid) of an owner ("?" for what it lacks)."""
    token, host, pid = [*owner.split(" "), "?", "?"][:3]
    return token, host, pid


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` is a process of this host that has ended (gone, or a zombie nobody has reaped yet)."""
    _, host, pid = _parts(owner)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc here: ask the kernel whether the process exists
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class RebuildLock:
    """The locks of ``projections``, taken or adopted by one owner (``token``: the lock another process took
    for this one to adopt; None: a new one)."""

    def __init__(self, client: aioredis.Redis, layout: RedisLayout, projections: Sequence[str],
                 token: str | None = None) -> None:
        self.client, self.projections = client, list(projections)
        self.keys = [layout.rebuild_lock(projection) for projection in self.projections]
        self.token = token or uuid.uuid4().hex
        self._acquire, self._refresh = client.register_script(ACQUIRE), client.register_script(REFRESH)
        self._release = client.register_script(RELEASE)

    @property
    def owner(self) -> str:
        return f"{self.token} {socket.gethostname()} {os.getpid()}"

    async def acquire(self) -> None:
        """Take every lock, or raise RebuildRunning (naming one that another owner holds) and take none."""
        dead: list[str] = []
        while True:
            found = await self._acquire(keys=self.keys, args=[self.owner, int(LOCK_SECONDS * 1000), *dead])
            if found == 0:
                return
            index, owner = found
            owner = owner.decode()
            if not _dead_here(owner):
                raise RebuildRunning.held_by(self.projections[int(index) - 1], owner)
            log.warning("the %s rebuild lock's owner (%s) is gone; taking the lock over",
                        self.projections[int(index) - 1], owner)
            dead.append(owner)

    async def refresh(self) -> bool:
        """Push the expiry back (and make this process the owner); False if a lock was lost meanwhile."""
        held = await self._refresh(keys=self.keys, args=[self.token, self.owner, int(LOCK_SECONDS * 1000)])
        return int(held) == len(self.keys)

    async def release(self) -> None:
        await self._release(keys=self.keys, args=[self.token])

    @contextlib.asynccontextmanager
    async def held(self, *, adopt: bool = False) -> AsyncIterator[None]:
        """Hold the locks for the block (``adopt``: the ones taken with this token for this process): kept
        alive meanwhile; the block is cancelled if they are lost (an owner that stalled longer than the expiry,
        then found another rebuild running)."""
        if adopt:
            if not await self.refresh():
                raise RebuildRunning(f"the {', '.join(self.projections)} rebuild lock taken for this process expired "
                                     "before it started; start the rebuild again")
        else:
            await self.acquire()
        keeping = asyncio.create_task(self._keep(asyncio.current_task()))
        try:
            yield
        finally:
            await cancel_all([keeping])
            await self.release()

    async def _keep(self, holder: asyncio.Task[object] | None) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                held = await self.refresh()
            except (ConnectionError, OSError, aioredis.RedisError) as error:
                log.warning("could not refresh the rebuild lock (%r); trying again", error)
                continue
            if not held and holder is not None:
                log.error("the %s rebuild lock was lost; stopping this rebuild", ", ".join(self.projections))
                holder.cancel()
                return
