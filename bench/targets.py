"""The targets of issue 13, each a figure of this run held against a floor of this run.

Three shapes: a figure at most ``floor + margin`` (a latency a few tenths of a millisecond above what it
cannot avoid), a figure at most or at least ``factor x floor`` (a tail, a throughput), and a figure at
most an absolute limit (the idle stack's CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    name: str
    figure: float
    floor: float | None  # None for an absolute limit
    floor_text: str  # what the floor is made of
    comparison: float  # figure - floor (a margin), figure / floor (a factor), or the figure (a limit)
    target: str  # the rule, in words
    met: bool
    unit: str
    kind: str  # "margin", "factor" or "limit": what ``comparison`` is
    note: str = ""  # why the target counts as missed whatever the figure, when it does

    @property
    def comparison_text(self) -> str:
        return {"margin": f"{self.comparison:+.3f} ms", "factor": f"{self.comparison:.2f}x"}.get(self.kind, "-")

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "figure": round(self.figure, 4), "unit": self.unit,
                "floor": None if self.floor is None else round(self.floor, 4), "floor_is": self.floor_text,
                "comparison": round(self.comparison, 4), "comparison_is": self.kind, "target": self.target,
                "met": self.met,
                **({"note": self.note} if self.note else {})}


def within_margin(name: str, figure: float, floor: float, floor_text: str, margin_ms: float) -> Outcome:
    difference = figure - floor
    return Outcome(name, figure, floor, floor_text, difference, f"<= floor + {margin_ms:g} ms",
                   difference <= margin_ms, "ms", "margin")


def at_most_times(name: str, figure: float, floor: float, floor_text: str, factor: float, unit: str) -> Outcome:
    ratio = figure / floor
    return Outcome(name, figure, floor, floor_text, ratio, f"<= {factor:g}x floor", ratio <= factor, unit, "factor")


def at_least_times(name: str, figure: float, floor: float, floor_text: str, factor: float, unit: str,
                   errors: int = 0) -> Outcome:
    """``errors``: failed requests behind the figure; any makes the target missed (the figure would flatter)."""
    ratio = figure / floor
    note = f"{errors} requests failed" if errors else ""
    return Outcome(name, figure, floor, floor_text, ratio, f">= {factor:g}x floor", ratio >= factor and not errors,
                   unit, "factor", note)


def at_most(name: str, figure: float, limit: float, unit: str) -> Outcome:
    return Outcome(name, figure, None, "-", figure, f"<= {limit:g} {unit}", figure <= limit, unit, "limit")
