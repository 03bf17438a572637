"""Reciprocal rank fusion of the semantic and keyword rankings."""

from __future__ import annotations

import pytest

from queries.fusion import RRF_K, reciprocal_rank_fusion


def test_a_result_in_both_rankings_beats_one_in_either() -> None:
    semantic = [{"key": "a", "score": 0.9}, {"key": "b", "score": 0.8}]
    keyword = [{"key": "b", "score": 7.0}, {"key": "c", "score": 3.0}]
    fused = reciprocal_rank_fusion([semantic, keyword], 3)
    assert [result["key"] for result in fused] == ["b", "a", "c"]
    assert fused[0]["score"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert reciprocal_rank_fusion([semantic, keyword], 1) == [fused[0]]
    assert reciprocal_rank_fusion([[], []], 5) == []
