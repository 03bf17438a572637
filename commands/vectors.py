"""Which values carry a vector, and the command-side check of a tenant's vector dimension.

A KV value that is a JSON object with a list of numbers in its embedding field (``embedding`` by
default) carries a vector; one with strings in its text fields (``text`` by default, or those the value
names in ``_index``) carries text that the built-in text embedder turns into one. Every projection and
the command side read both through `extract_vector` and `tenant_specs`, so they agree on what is indexed.

A tenant's dimension is either configured (``AMS_VECTOR_TENANTS``) or fixed by the first vector the
embedder indexes for it; the embedder records it in its own state, and the command side reads it from
there through a `DimensionSource` (a fixed dimension never changes, so it may be cached for good).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import numpy as np
import orjson
from starlette.requests import Request

from ams.http import ApiError
from ams.settings import Settings

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[Metric, ...] = ("cosine", "ip", "l2")


class InvalidVector(ValueError):
    """A value's embedding field is present but is not a usable vector; the message says why."""


@dataclass(frozen=True, slots=True)
class VectorSpec:
    dim: int | None  # None: fixed by the tenant's first vector
    metric: Metric


def _metric(raw: object, where: str) -> Metric:
    if raw not in METRICS:
        raise SystemExit(f"{where}: metric must be one of {', '.join(METRICS)}, got {raw!r}")
    return cast(Metric, raw)


def tenant_specs(settings: Settings) -> dict[str, VectorSpec]:
    """The configured tenants (``AMS_VECTOR_TENANTS``), read strictly: a typo stops the process."""
    try:
        raw = orjson.loads(settings.vector_tenants)
    except orjson.JSONDecodeError as error:
        example = '{"tenant": {"dim": 384, "metric": "cosine"}}'
        raise SystemExit(f"AMS_VECTOR_TENANTS is not JSON ({error}); expected an object like {example}") from None
    if not isinstance(raw, dict):
        raise SystemExit("AMS_VECTOR_TENANTS must be a JSON object mapping tenant names to {dim, metric}")
    specs = {}
    for tenant, spec in raw.items():
        where = f"AMS_VECTOR_TENANTS[{tenant!r}]"
        if not isinstance(spec, dict):
            raise SystemExit(f"{where} must be an object like {{\"dim\": 384, \"metric\": \"cosine\"}}")
        dim = spec.get("dim")
        if dim is not None and (not isinstance(dim, int) or not 1 <= dim <= settings.vector_max_dim):
            raise SystemExit(f"{where}: dim must be a whole number from 1 to {settings.vector_max_dim}, got {dim!r}")
        specs[tenant] = VectorSpec(dim, _metric(spec.get("metric", settings.vector_metric), where))
    return specs


def spec_for(settings: Settings, specs: dict[str, VectorSpec], tenant: str) -> VectorSpec:
    return specs.get(tenant) or VectorSpec(None, _metric(settings.vector_metric, "AMS_VECTOR_METRIC"))


def extract_vector(value: Any, settings: Settings) -> list[float] | str | None:
    """The value's vector (a list of floats), its text to embed (a str), or None when it carries neither.

    Raises InvalidVector when the embedding field is there but is not a non-empty list of finite numbers
    no longer than the configured maximum dimension.
    """
    if not isinstance(value, dict):
        return None
    embedding = value.get(settings.vector_field)
    if embedding is None:
        return value_text(value, settings)
    if not isinstance(embedding, list) or not embedding:
        raise InvalidVector(f"field {settings.vector_field!r} must be a non-empty list of numbers")
    if len(embedding) > settings.vector_max_dim:
        raise InvalidVector(f"field {settings.vector_field!r} has {len(embedding)} dimensions; "
                            f"the limit is {settings.vector_max_dim}")
    if not all(type(number) is float or type(number) is int for number in embedding):  # bool is not int here
        odd = next(number for number in embedding if type(number) is not float and type(number) is not int)
        raise InvalidVector(f"field {settings.vector_field!r} must hold only numbers, found {odd!r}")
    if not np.isfinite(np.asarray(embedding, dtype=np.float64)).all():
        raise InvalidVector(f"field {settings.vector_field!r} must hold only finite numbers")
    return embedding


def value_text(value: dict[str, Any], settings: Settings) -> str | None:
    """The text to embed: the value's text fields (its own ``_index`` list, else the configured ones) that
    hold non-empty strings, joined by blank lines; None when there is none or the value says ``"_index": false``.
    """
    named = value.get(settings.vector_index_field, settings.vector_text_fields)
    if named is False:
        return None
    fields = [name for name in named if isinstance(name, str)] if isinstance(named, list) else \
        settings.vector_text_fields
    texts = [text for name in fields if isinstance(text := _field(value, name), str) and text.strip()]
    return "\n\n".join(texts) if texts else None


def _field(value: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


class DimensionUnavailable(RuntimeError):
    """The tenant's dimension cannot be learned right now (its store is unreachable)."""


class DimensionSource(Protocol):
    """Where the command side learns a tenant's fixed dimension (None: not fixed yet).

    Raises DimensionUnavailable when it cannot tell.
    """

    async def dimension(self, tenant: str) -> int | None: ...


async def check_vector_value(request: Request, settings: Settings, tenant: str, value: Any) -> None:
    """Refuse (422, nothing appended) a value whose vector is malformed or has the wrong dimension."""
    try:
        vector = extract_vector(value, settings)
    except InvalidVector as error:
        raise ApiError(422, "invalid_vector", str(error)) from None
    if not isinstance(vector, list):
        return
    # The namespace's: a sandbox's embedder fixes its tenants' dimensions in the sandbox, not in live memory.
    source: DimensionSource = request.app.state.namespaces.resolve(request).vectors.dimensions
    try:
        dimension = await source.dimension(tenant)
    except DimensionUnavailable as error:
        raise ApiError(503, "vector_dimension_unavailable", f"{error}; nothing was written, retry the write") from None
    if dimension is not None and len(vector) != dimension:
        raise ApiError(422, "wrong_dimension",
                       f"field {settings.vector_field!r} has {len(vector)} dimensions; this tenant's vectors have "
                       f"{dimension} (fixed by configuration or by its first vector)")
