"""Keyword search over one tenant's memories: an in-memory BM25 index beside its vectors.

It is part of the FAISS view (`projections.faiss_index.TenantIndex` keeps one), so it is a projection of
``memory.embeddings`` like the vectors: the same upserts and deletes change both at once, the same marks
tell how far both reflect the log, a consistency token waits for both, and a delete, expiry or overwrite
leaves both together. A memory's words are those of every string in its value (the fields the search
results return), lower-cased, split on anything that is not a letter or a digit, and reduced to their stem
by the Snowball English stemmer (as PostgreSQL's `english` text search does), so that "ruined" finds "ruin".

BM25 with the usual k1 = 1.2, b = 0.75. Why a BM25 projection rather than PostgreSQL's text search, and
its measured quality and latency: docs/ARCHITECTURE.md and `bench/retrieval.py`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import snowballstemmer

K1 = 1.2
B = 0.75
_WORD = re.compile(r"[^\W_]+")
SKIPPED_FIELDS = frozenset({"_index"})


_STEMMER = snowballstemmer.stemmer("english")


def tokens(text: str) -> list[str]:
    """The text's words as written, lower-cased."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=100_000)
def _stem(token: str) -> str:
    """Cached: the stemmer is pure Python (about 0.1 ms a word), and a vocabulary repeats."""
    return str(_STEMMER.stemWord(token))


def words(text: str) -> list[str]:
    """The text's index terms: its tokens' stems."""
    return [_stem(token) for token in tokens(text)]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            if name not in SKIPPED_FIELDS:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def value_words(value: Any) -> list[str]:
    """The words a memory is found by: those of every string in its value."""
    return [word for text in _strings(value) for word in words(text)]


class KeywordIndex:
    def __init__(self) -> None:
        self.postings: dict[str, dict[str, int]] = {}  # word -> key -> occurrences in that key's value
        self.lengths: dict[str, int] = {}  # key -> number of words
        self.vocabulary: dict[str, list[str]] = {}  # key -> its distinct words (to remove it)
        self.total = 0

    def put(self, key: str, value: Any) -> None:
        """Index (or re-index) a key's value."""
        self.remove(key)
        counts = Counter(value_words(value))
        self.lengths[key] = sum(counts.values())
        self.total += self.lengths[key]
        self.vocabulary[key] = list(counts)
        for word, count in counts.items():
            self.postings.setdefault(word, {})[key] = count

    def remove(self, key: str) -> None:
        length = self.lengths.pop(key, None)
        if length is None:
            return
        self.total -= length
        for word in self.vocabulary.pop(key):
            keys = self.postings[word]
            del keys[key]
            if not keys:
                del self.postings[word]

    def search(self, query: str, k: int, keep: Callable[[str], bool]) -> list[tuple[str, float]]:
        """The ``k`` keys with the best BM25 score for ``query`` among those ``keep`` accepts, best first."""
        if not self.lengths:
            return []
        documents, average = len(self.lengths), self.total / len(self.lengths) or 1.0
        scores: dict[str, float] = {}
        for word in set(words(query)):
            keys = self.postings.get(word)
            if not keys:
                continue
            idf = math.log(1 + (documents - len(keys) + 0.5) / (len(keys) + 0.5))
            for key, count in keys.items():
                norm = count + K1 * (1 - B + B * self.lengths[key] / average)
                scores[key] = scores.get(key, 0.0) + idf * count * (K1 + 1) / norm
        ranked = (item for item in sorted(scores.items(), key=lambda item: (-item[1], item[0])) if keep(item[0]))
        return [item for _, item in zip(range(k), ranked, strict=False)]
