"""The Python client of AMS, the Autonomous Memory System: sync and async, on httpx.

    from memory_client import MemoryClient

    memory = MemoryClient("http://127.0.0.1:8787/v1", token)   # token: `ams token --tenant T`
    memory.set("session:1234", {"step": 3, "plan": ["search"]})
    memory.get("session:1234")                                 # {"step": 3, "plan": ["search"]}
    memory.query([0.1, 0.2, 0.3], top_k=5)                     # [{key, score, value, version}, ...]

`AsyncMemoryClient` has the same methods, awaited. Reads carry the newest positions of the client's own
writes (`X-AMS-Min-Position`), so a client always reads its own writes, `wait=False` ones included.
Errors are typed (`KeyNotFound`, `Conflict`, `Unauthorized`, ...; all `AMSError`) and carry the server's
status, code and message.
"""

from memory_client.calls import RAISE, Call
from memory_client.client import AsyncMemoryClient, MemoryClient
from memory_client.errors import (
    AMSError,
    Conflict,
    ConsistencyTimeout,
    Forbidden,
    InvalidRequest,
    KeyNotFound,
    PayloadTooLarge,
    ServerError,
    TransportError,
    Unauthorized,
)
from memory_client.models import (
    BatchResult,
    Delete,
    KeyInfo,
    KeyPage,
    Operation,
    OpResult,
    Patch,
    Put,
    StreamPage,
    Versioned,
    WriteResult,
)
from memory_client.session import Session

__all__ = [
    "RAISE",
    "AMSError",
    "AsyncMemoryClient",
    "BatchResult",
    "Call",
    "Conflict",
    "ConsistencyTimeout",
    "Delete",
    "Forbidden",
    "InvalidRequest",
    "KeyInfo",
    "KeyNotFound",
    "KeyPage",
    "MemoryClient",
    "OpResult",
    "Operation",
    "Patch",
    "PayloadTooLarge",
    "Put",
    "ServerError",
    "Session",
    "StreamPage",
    "TransportError",
    "Unauthorized",
    "Versioned",
    "WriteResult",
]
