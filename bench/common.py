"""What the benchmarks share: where they print, and latency summaries.

Reports go to standard output (``console``); progress and status lines to standard error (``progress``),
so that ``--json`` output is the only thing on standard output.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

# Not on a terminal (a log, CI), wide enough that the tables keep one line per row.
console = Console(width=None if sys.stdout.isatty() else 150)
progress = Console(stderr=True)


@dataclass
class Latencies:
    """One path's sequential round trips, in milliseconds."""

    name: str
    samples: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        """The nearest-rank percentile: the smallest sample that ``fraction`` of the samples do not exceed."""
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def p999(self) -> float:
        return self.percentile(0.999)

    def as_json(self) -> dict[str, Any]:
        return {"samples": len(self.samples), "p50_ms": round(self.p50, 4), "p99_ms": round(self.p99, 4),
                "p999_ms": round(self.p999, 4), "mean_ms": round(sum(self.samples) / len(self.samples), 4)}
