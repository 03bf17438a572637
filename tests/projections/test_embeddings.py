"""The memory.embeddings record format."""

from __future__ import annotations

import numpy as np
import pytest

from commands.envelope import MalformedEvent
from projections.embeddings import DELETE, MARK, UPSERT, EmbeddingOp, decode_op, encode_op


def test_operations_round_trip() -> None:
    upsert = EmbeddingOp(UPSERT, "t1", "doc/1", 42, np.asarray([0.5, -1.25, 3e-8], dtype=np.float32), "l2",
                         {"kind": "fact"}, 1_700_000_000_000, repair=True)
    decoded = decode_op(encode_op(upsert))
    assert decoded.vector is not None and decoded.vector.tolist() == upsert.vector.tolist()  # type: ignore[union-attr]
    assert (decoded.op, decoded.tenant, decoded.key, decoded.version, decoded.metric, decoded.value,
            decoded.expires_at, decoded.repair) == (UPSERT, "t1", "doc/1", 42, "l2", {"kind": "fact"},
                                                    1_700_000_000_000, True)
    assert decode_op(encode_op(EmbeddingOp(DELETE, "t1", "doc/1", 43))) == EmbeddingOp(DELETE, "t1", "doc/1", 43)
    assert decode_op(encode_op(EmbeddingOp(MARK, partition=3, through=9))) == EmbeddingOp(MARK, partition=3, through=9)


@pytest.mark.parametrize("raw", [
    None, b"not json", b"[]", b'{"v": 2, "op": "mark"}', b'{"v": 1, "op": "drop"}',
    b'{"v": 1, "op": "delete", "tenant": "BAD TENANT", "key": "a", "version": 1}',
    b'{"v": 1, "op": "delete", "tenant": "t", "key": "a", "version": -1}',
    b'{"v": 1, "op": "upsert", "tenant": "t", "key": "a", "version": 1, "vector": "%%%", "metric": "cosine"}',
    b'{"v": 1, "op": "upsert", "tenant": "t", "key": "a", "version": 1, "vector": "AAAAAA==", "metric": "dot"}',
])
def test_anything_else_is_malformed(raw: bytes | None) -> None:
    with pytest.raises(MalformedEvent):
        decode_op(raw)
