"""A small labeled retrieval set made from WordNet 3.0 (Debian's `wordnet-base`), by a fixed rule.

WordNet is public (Princeton's WordNet 3.0 licence) and ships as a registry package, so the set is the same
on every machine and nothing is downloaded. The rule, for noun synsets:

- **memories**: every chosen synset's definition (its gloss up to the first example), e.g. "a motor
  vehicle with four wheels; usually propelled by an internal combustion engine";
- **queries**, each with exactly one relevant memory (its synset's definition):
  - ``words``: the synset's lemma names ("car, auto, automobile, machine, motorcar"): the memory rarely
    contains them, so this measures retrieval by meaning (a reverse dictionary);
  - ``example``: the synset's first usage example ("he needs a car to get to work"), when it has one:
    a sentence about the thing, sharing some words with its definition or none.

Synsets are chosen deterministically: those with at least two lemma names and a definition of at least
five words, every ``stride``-th of them in file order, so that the set spans the whole lexicon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DATA_NOUN = Path("/usr/share/wordnet/data.noun")
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Query:
    text: str
    relevant: str  # the key of the one relevant memory
    kind: str  # "words" or "example"


@dataclass(frozen=True)
class LabeledSet:
    memories: dict[str, str]  # key -> text
    queries: list[Query]


@dataclass(frozen=True)
class _Synset:
    offset: str
    lemmas: list[str]
    definition: str
    examples: list[str]


def _parse(line: str) -> _Synset | None:
    if line.startswith("  ") or " | " not in line:
        return None  # the licence header, or a synset without a gloss
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    count = int(parts[3], 16)
    lemmas = [re.sub(r"\(\w+\)$", "", parts[4 + 2 * i]).replace("_", " ") for i in range(count)]
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    return _Synset(parts[0], lemmas, definition, _EXAMPLE.findall(gloss))


def load(memories: int, path: Path = DATA_NOUN) -> LabeledSet:
    """``memories`` synsets' definitions, and their ``words`` and ``example`` queries."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: install Debian's wordnet-base (`ams setup --for-bench` does)")
    eligible = [synset for line in path.read_text(encoding="utf-8").splitlines()
                if (synset := _parse(line)) and len(synset.lemmas) >= 2 and len(synset.definition.split()) >= 5]
    stride = max(1, len(eligible) // memories)
    chosen = eligible[::stride][:memories]
    texts = {f"wn/{synset.offset}": synset.definition for synset in chosen}
    queries = [Query(", ".join(synset.lemmas), f"wn/{synset.offset}", "words") for synset in chosen]
    queries += [Query(synset.examples[0], f"wn/{synset.offset}", "example") for synset in chosen if synset.examples]
    return LabeledSet(texts, queries)
