"""Where the FAISS view's snapshots live, one file per generation of the view.

Generation 0 is ``<AMS_HOME>/vectors/faiss-view.npz``; `ams rebuild vectors` publishes generation N as
``faiss-view.g<N>.npz`` by renaming a complete, fsynced file into place, so a gateway never finds half of
one. Each gateway serves the newest generation it finds: at start, and whenever a newer one appears (see
`projections.faiss_feed`). A gateway writes its snapshots to its own generation's file only, so an old
gateway can never overwrite a newer generation. A rebuild in progress keeps its view in
``faiss-view.rebuild.npz``, a name no gateway reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from ams.settings import Settings

GENERATION_FILE = re.compile(r"faiss-view\.g(\d+)\.npz")


def directory(settings: Settings) -> Path:
    return settings.home / "vectors"


def generation_path(settings: Settings, generation: int) -> Path:
    name = "faiss-view.npz" if generation == 0 else f"faiss-view.g{generation}.npz"
    return directory(settings) / name


def published(settings: Settings) -> dict[int, Path]:
    """Every generation with a snapshot file."""
    found: dict[int, Path] = {}
    if not directory(settings).is_dir():
        return found
    for path in directory(settings).iterdir():
        match = GENERATION_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
        elif path.name == "faiss-view.npz":
            found[0] = path
    return found


def newest_generation(settings: Settings) -> int:
    return max(published(settings), default=0)


def snapshot_path(settings: Settings) -> Path:
    """The snapshot of the newest generation: the one gateways serve."""
    return generation_path(settings, newest_generation(settings))


def rebuild_path(settings: Settings) -> Path:
    return directory(settings) / "faiss-view.rebuild.npz"


def drop_older(settings: Settings, generation: int) -> list[Path]:
    """Delete the snapshots of generations older than ``generation``; returns them."""
    dropped = [path for number, path in published(settings).items() if number < generation]
    for path in dropped:
        path.unlink(missing_ok=True)
    return dropped
