"""The built-in text embedder, chosen by ``AMS_TEXT_EMBEDDER``: on by default, part of the default install.

``minilm`` (default) is all-MiniLM-L6-v2 run in numpy (`projections.minilm`): the model's weights ship in a
registry package, nothing is downloaded at run time and nothing needs torch. ``minilm-static`` is the same
model's token table alone (much faster, much worse at paraphrases), ``none`` turns text embedding off
(values are then indexed only by the vectors they carry). Loaded once per process, on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Protocol

import numpy as np

from ams.settings import Settings
from projections.minilm import MiniLM, ModelMissing, StaticMiniLM

log = logging.getLogger("ams.embedder")

OFF = "none"


class TextEmbedderUnavailable(RuntimeError):
    """A text embedder is configured but cannot be loaded; the message says what to install."""


class TextEmbedder(Protocol):
    dimension: int
    name: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32 vectors."""


EMBEDDERS: dict[str, Callable[[], TextEmbedder]] = {"minilm": MiniLM, "minilm-static": StaticMiniLM}


def check_name(name: str) -> None:
    if name != OFF and name not in EMBEDDERS:
        raise SystemExit(f"AMS_TEXT_EMBEDDER={name!r} is not a known text embedder; "
                         f"choose from {[*sorted(EMBEDDERS), OFF]}")


@cache
def _load(name: str) -> TextEmbedder:
    check_name(name)
    try:
        return EMBEDDERS[name]()
    except ModelMissing as error:
        raise TextEmbedderUnavailable(str(error)) from None


def text_embedder(settings: Settings) -> TextEmbedder | None:
    """The configured text embedder; None when it is turned off. Raises TextEmbedderUnavailable."""
    if settings.text_embedder == OFF:
        return None
    return _load(settings.text_embedder)
