"""Every setting of every AMS package, in one place.

Each field reads an ``AMS_``-prefixed environment variable and falls back to a default that fits the
local stack (`ams up`), so a fresh checkout runs with no configuration at all.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ams import credentials

REPO_ROOT = Path(__file__).resolve().parent.parent
# Signs the tokens of `ams token` on a developer's machine; a gateway exposed to others refuses it.
DEVELOPMENT_JWT_SECRET = "ams-local-development-secret-not-for-production"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AMS_{name}", default)


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"AMS_{name}={raw!r} is not a whole number; fix or unset it.") from None


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"AMS_{name}={raw!r} is not a number; fix or unset it.") from None


def _env_policy() -> dict[str, dict[str, str]]:
    from commands.consistency import parse_policy

    raw = _env("CONSISTENCY_POLICY", "{}")
    try:
        return parse_policy(json.loads(raw))
    except ValueError as error:
        raise SystemExit(f"AMS_CONSISTENCY_POLICY={raw!r} is not valid: {error}") from None


@dataclass(frozen=True)
class KafkaAccess:
    """How a client reaches the brokers, and as whom (SASL/SCRAM when a password is set)."""

    bootstrap: str
    username: str = ""
    password: str = ""
    security_protocol: str = "PLAINTEXT"  # SASL_PLAINTEXT or SASL_SSL with credentials
    sasl_mechanism: str = "SCRAM-SHA-512"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of every aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.password:
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options


def default_home() -> Path:
    return Path(_env("HOME", str(REPO_ROOT / ".ams")))


@dataclass(frozen=True)
class Settings:
    # Where the local stack keeps its data, logs and pid files, and where downloads are cached.
    home: Path = field(default_factory=default_home)
    cache_dir: Path = field(
        default_factory=lambda: Path(_env("CACHE_DIR", str(Path.home() / ".cache" / "ams")))
    )

    # Who this process is to the backends (ams/credentials.py), and where the local stack's passwords are
    # (made on first use). Explicit credentials (AMS_KAFKA_PASSWORD, AMS_REDIS_URL, AMS_POSTGRES_DSN) win.
    principal: str = field(default_factory=lambda: _env("PRINCIPAL", credentials.ADMIN))
    secrets_dir: Path = field(default_factory=lambda: Path(_env("SECRETS_DIR", str(default_home() / "secrets"))))

    # Kafka: the log, the only write model.
    kafka_port: int = field(default_factory=lambda: _env_int("KAFKA_PORT", 19092))
    kafka_controller_port: int = field(
        default_factory=lambda: _env_int("KAFKA_CONTROLLER_PORT", 19093)
    )
    kafka_bootstrap: str = ""
    kafka_username: str = field(default_factory=lambda: _env("KAFKA_USERNAME", ""))
    kafka_password: str = field(default_factory=lambda: _env("KAFKA_PASSWORD", ""))
    # PLAINTEXT, SASL_PLAINTEXT or SASL_SSL; default: SASL_PLAINTEXT when there is a password.
    kafka_security_protocol: str = field(default_factory=lambda: _env("KAFKA_SECURITY_PROTOCOL", ""))
    events_topic: str = field(default_factory=lambda: _env("EVENTS_TOPIC", "memory.events"))
    dlq_topic: str = field(default_factory=lambda: _env("DLQ_TOPIC", "memory.dlq"))
    partitions: int = field(default_factory=lambda: _env_int("PARTITIONS", 6))
    kafka_heap: str = field(default_factory=lambda: _env("KAFKA_HEAP", "512m"))

    # Redis: the hot projection.
    redis_port: int = field(default_factory=lambda: _env_int("REDIS_PORT", 16379))
    redis_url: str = ""
    redis_prefix: str = field(default_factory=lambda: _env("REDIS_PREFIX", "ams"))
    # With Redis replicas: after each batch, wait until this many replicas have it (Redis WAIT).
    redis_wait_replicas: int = field(default_factory=lambda: _env_int("REDIS_WAIT_REPLICAS", 0))
    redis_wait_timeout_ms: int = field(default_factory=lambda: _env_int("REDIS_WAIT_TIMEOUT_MS", 1000))
    # The CPU priority (nice) of the projections no write waits for (PostgreSQL, the embedder, Milvus) and
    # of Milvus Lite: they use what the write and read path leave (docs/ARCHITECTURE.md, "Where a write's
    # time goes"). 0 runs them at the same priority as the gateway.
    background_nice: int = field(default_factory=lambda: _env_int("BACKGROUND_NICE", 10))

    # PostgreSQL: the durable projection.
    postgres_port: int = field(default_factory=lambda: _env_int("POSTGRES_PORT", 15432))
    postgres_dsn: str = ""
    # The schema holding the durable projection's tables (a rebuild or a sandbox uses another one).
    postgres_schema: str = field(default_factory=lambda: _env("POSTGRES_SCHEMA", "ams"))

    # The query gateway.
    gateway_host: str = field(default_factory=lambda: _env("GATEWAY_HOST", "127.0.0.1"))
    gateway_port: int = field(default_factory=lambda: _env_int("GATEWAY_PORT", 8787))
    # Names this gateway among its replicas: unique per replica and stable across its restarts (it makes the
    # gateway's Kafka transactional id). Default: the host's name and the gateway's port.
    gateway_instance: str = field(
        default_factory=lambda: _env("GATEWAY_INSTANCE", f"{socket.gethostname()}-{_env('GATEWAY_PORT', '8787')}")
    )
    # How many gateway processes `ams up` starts; they share the gateway's port (SO_REUSEPORT), so that
    # requests use every core. Default: one per CPU.
    gateway_processes: int = field(default_factory=lambda: _env_int("GATEWAY_PROCESSES", os.cpu_count() or 1))
    # Names this projection worker among the workers of its projection: unique per worker and stable across
    # its restarts (its Kafka group instance id, so a restarted worker takes its partitions back at once).
    projector_instance: str = field(default_factory=lambda: _env("PROJECTOR_INSTANCE", socket.gethostname()))
    # On SIGTERM the gateway stops taking requests, lets open ones finish for this long (a watch never
    # finishes by itself), then closes them and stops.
    shutdown_grace_seconds: int = field(default_factory=lambda: _env_int("SHUTDOWN_GRACE_SECONDS", 3))
    projector_metrics_port: int = field(
        default_factory=lambda: _env_int("PROJECTOR_METRICS_PORT", 9187)
    )

    # Commands and reads.
    default_tenant: str = field(default_factory=lambda: _env("DEFAULT_TENANT", "default"))
    max_value_bytes: int = field(default_factory=lambda: _env_int("MAX_VALUE_BYTES", 1 << 20))
    max_body_bytes: int = field(default_factory=lambda: _env_int("MAX_BODY_BYTES", 4 << 20))
    # How long a write waits for Kafka to acknowledge its append before answering 504 (it may still land).
    log_timeout: float = field(default_factory=lambda: _env_float("LOG_TIMEOUT", 5.0))
    write_timeout: float = field(default_factory=lambda: _env_float("WRITE_TIMEOUT", 5.0))
    read_wait_timeout: float = field(default_factory=lambda: _env_float("READ_WAIT_TIMEOUT", 5.0))
    # Current values each namespace's hot-key cache keeps in the gateway (queries/hot_cache.py); 0 turns it off.
    hot_cache_keys: int = field(default_factory=lambda: _env_int("HOT_CACHE_KEYS", 10_000))
    max_batch_operations: int = field(default_factory=lambda: _env_int("MAX_BATCH_OPERATIONS", 500))
    # A retried command (same Idempotency-Key on the same key or stream) is a duplicate for this long after
    # it was applied, measured in event time (commands/fold.py). Every projection and rebuild of one log must
    # use the same value, or they would disagree on which retries were duplicates.
    idempotency_window_hours: float = field(default_factory=lambda: _env_float("IDEMPOTENCY_WINDOW_HOURS", 1.0))
    # Per-tenant default consistency class by key prefix (see commands/consistency.py).
    consistency_policy: dict[str, dict[str, str]] = field(default_factory=lambda: _env_policy())
    max_watchers_per_tenant: int = field(default_factory=lambda: _env_int("MAX_WATCHERS_PER_TENANT", 8))
    # Requests per second each tenant may make of one gateway, and how many it may make at once (a token bucket).
    rate_limit_per_second: float = field(default_factory=lambda: _env_float("RATE_LIMIT_PER_SECOND", 2000.0))
    rate_limit_burst: int = field(default_factory=lambda: _env_int("RATE_LIMIT_BURST", 4000))

    # Vector memory (docs/VECTORS.md): which value fields carry a vector, per-tenant dimension and metric,
    # the views (FAISS in the gateway, Milvus) and their bounds.
    embeddings_topic: str = field(default_factory=lambda: _env("EMBEDDINGS_TOPIC", "memory.embeddings"))
    vector_field: str = field(default_factory=lambda: _env("VECTOR_FIELD", "embedding"))
    # The value fields whose text the built-in embedder turns into the value's vector (comma-separated; dotted
    # names reach into nested objects). A value may name its own in its index field (`"_index": ["title"]`),
    # or opt out of text embedding with `"_index": false`.
    vector_text_fields: tuple[str, ...] = field(
        default_factory=lambda: tuple(name.strip() for name in _env("VECTOR_TEXT_FIELDS", "text").split(",")
                                      if name.strip())
    )
    vector_index_field: str = field(default_factory=lambda: _env("VECTOR_INDEX_FIELD", "_index"))
    # JSON: {"tenant": {"dim": 384, "metric": "cosine"}}; other tenants: the first vector fixes the dimension.
    vector_tenants: str = field(default_factory=lambda: _env("VECTOR_TENANTS", "{}"))
    vector_metric: str = field(default_factory=lambda: _env("VECTOR_METRIC", "cosine"))
    vector_max_dim: int = field(default_factory=lambda: _env_int("VECTOR_MAX_DIM", 4096))
    vector_max_k: int = field(default_factory=lambda: _env_int("VECTOR_MAX_K", 1000))
    vector_backend: str = field(default_factory=lambda: _env("VECTOR_BACKEND", "faiss"))
    vector_exact_below: int = field(default_factory=lambda: _env_int("VECTOR_EXACT_BELOW", 20_000))
    vector_hnsw_m: int = field(default_factory=lambda: _env_int("VECTOR_HNSW_M", 32))
    vector_ef_construction: int = field(default_factory=lambda: _env_int("VECTOR_EF_CONSTRUCTION", 100))
    vector_ef_search: int = field(default_factory=lambda: _env_int("VECTOR_EF_SEARCH", 128))
    vector_snapshot_seconds: float = field(default_factory=lambda: _env_float("VECTOR_SNAPSHOT_SECONDS", 30.0))
    # "minilm" (default), "minilm-static" or "none" (projections/text_embedder.py).
    text_embedder: str = field(default_factory=lambda: _env("TEXT_EMBEDDER", "minilm"))
    # Longest text (in characters) a search by text may send; longer ones are a 413 (the model reads 256 tokens).
    max_search_text_chars: int = field(default_factory=lambda: _env_int("MAX_SEARCH_TEXT_CHARS", 4096))
    # A Milvus server ("http://host:19530") or a Milvus Lite data path, served by `ams up` on milvus_port.
    milvus_uri: str = ""
    milvus_port: int = field(default_factory=lambda: _env_int("MILVUS_PORT", 19530))

    # Auth: OAuth2 bearer JWTs. The algorithms are fixed here, never taken from a token.
    jwt_secret: str = field(
        default_factory=lambda: _env("JWT_SECRET", DEVELOPMENT_JWT_SECRET)
    )
    jwt_algorithms: tuple[str, ...] = field(
        default_factory=lambda: tuple(_env("JWT_ALGORITHMS", "HS256").split(","))
    )
    jwt_audience: str = field(default_factory=lambda: _env("JWT_AUDIENCE", "ams"))
    jwt_issuer: str = field(default_factory=lambda: _env("JWT_ISSUER", "ams-local"))
    jwt_public_key: str = field(default_factory=lambda: _env("JWT_PUBLIC_KEY", ""))
    jwks_url: str = field(default_factory=lambda: _env("JWKS_URL", ""))
    tenant_claim: str = field(default_factory=lambda: _env("TENANT_CLAIM", "tenant"))

    # The doors (issue 19): what the gateway and the workers' metrics pages take, and who may take them.
    # "development" (the default) or "production"; production, or a gateway on a non-loopback address,
    # refuses the development JWT secret and short secrets (ams/security.py).
    env: str = field(default_factory=lambda: _env("ENV", "development"))
    # TLS for the gateway: a PEM certificate (chain) and its key; both or neither.
    tls_certfile: str = field(default_factory=lambda: _env("TLS_CERTFILE", ""))
    tls_keyfile: str = field(default_factory=lambda: _env("TLS_KEYFILE", ""))
    # A request's line and headers: at most this many bytes (431 past it), received within this many
    # seconds of the connection's first byte or the previous response (408 past it).
    max_header_bytes: int = field(default_factory=lambda: _env_int("MAX_HEADER_BYTES", 32 << 10))
    header_timeout_seconds: float = field(default_factory=lambda: _env_float("HEADER_TIMEOUT_SECONDS", 10.0))
    # A request's body must arrive within this long once its headers have (408 past it).
    body_timeout_seconds: float = field(default_factory=lambda: _env_float("BODY_TIMEOUT_SECONDS", 30.0))
    # An idle keep-alive connection is closed after this long.
    idle_timeout_seconds: float = field(default_factory=lambda: _env_float("IDLE_TIMEOUT_SECONDS", 5.0))
    # Open connections per gateway process; past it, new requests are answered 503 at once.
    max_connections: int = field(default_factory=lambda: _env_int("MAX_CONNECTIONS", 1000))
    max_sandboxes_per_tenant: int = field(default_factory=lambda: _env_int("MAX_SANDBOXES_PER_TENANT", 64))
    # The projection workers' metrics and health pages: where they listen, the bearer token they ask for
    # (required off loopback), and whether their metrics may name tenants (a sandbox's owner and name).
    metrics_host: str = field(default_factory=lambda: _env("METRICS_HOST", "127.0.0.1"))
    metrics_token: str = field(default_factory=lambda: _env("METRICS_TOKEN", ""))
    metrics_tenant_labels: bool = field(default_factory=lambda: _env("METRICS_TENANT_LABELS", "") == "1")

    def __post_init__(self) -> None:
        if self.gateway_processes < 1:
            raise SystemExit(f"AMS_GATEWAY_PROCESSES={self.gateway_processes} must be at least 1.")
        if not 0 <= self.background_nice <= 19:
            raise SystemExit(f"AMS_BACKGROUND_NICE={self.background_nice} must be from 0 (the gateway's priority) "
                             "to 19 (the lowest); raising a priority above it needs privileges AMS does not take.")
        if self.principal not in credentials.CLIENTS:
            raise SystemExit(f"AMS_PRINCIPAL={self.principal!r} is none of {', '.join(credentials.CLIENTS)}.")
        if not self.services_given:
            credentials.ensure(self.secrets_dir)
        secret = credentials.password(self.secrets_dir, self.principal) or ""
        # Derived addresses follow the ports unless given explicitly.
        if not self.kafka_bootstrap:
            bootstrap = _env("KAFKA_BOOTSTRAP", f"127.0.0.1:{self.kafka_port}")
            object.__setattr__(self, "kafka_bootstrap", bootstrap)
        if not self.kafka_password and "KAFKA_BOOTSTRAP" not in self._given:
            object.__setattr__(self, "kafka_password", secret)
        if not self.kafka_username:
            object.__setattr__(self, "kafka_username", self.principal)
        if not self.kafka_security_protocol:
            protocol = "SASL_PLAINTEXT" if self.kafka_password else "PLAINTEXT"
            object.__setattr__(self, "kafka_security_protocol", protocol)
        if not self.redis_url:
            url = f"redis://{self.principal}:{secret}@127.0.0.1:{self.redis_port}/0"
            object.__setattr__(self, "redis_url", _env("REDIS_URL", url))
        if not self.postgres_dsn:
            role = credentials.postgres_role(self.principal)
            dsn = f"postgresql://{role}:{secret}@127.0.0.1:{self.postgres_port}/ams?sslmode=require"
            object.__setattr__(self, "postgres_dsn", _env("POSTGRES_DSN", dsn))
        if not self.milvus_uri:
            object.__setattr__(self, "milvus_uri", _env("MILVUS_URI", str(self.home / "milvus" / "ams.db")))

    @property
    def kafka(self) -> KafkaAccess:
        return KafkaAccess(self.kafka_bootstrap, self.kafka_username, self.kafka_password,
                           self.kafka_security_protocol)

    @property
    def _given(self) -> set[str]:
        """The service addresses the environment names (without the AMS_ prefix)."""
        return {name for name in ("KAFKA_BOOTSTRAP", "REDIS_URL", "POSTGRES_DSN") if f"AMS_{name}" in os.environ}

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def milvus_is_lite(self) -> bool:
        """A Milvus Lite data path rather than a server URI: `ams up` serves it to every process."""
        return not self.milvus_uri.startswith(("http://", "https://", "tcp://"))

    @property
    def milvus_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.milvus_port}" if self.milvus_is_lite else self.milvus_uri

    @property
    def services_given(self) -> bool:
        """True when the environment names external services, so nothing local must be started."""
        return bool(self._given)


@cache
def get_settings() -> Settings:
    return Settings()
