"""How the backends are secured: who may connect to each, and what each principal may do there.

One place for it, called by the launcher per component (and by a cluster topology per node):

- Kafka: SASL/SCRAM-SHA-512 for clients and between brokers, SASL/PLAIN on the controller listener (KRaft
  does not take SCRAM there), the StandardAuthorizer with ACLs per principal (`kafka_grants`).
- Redis: ACL users in a generated aclfile; the ``default`` user is off.
- PostgreSQL: a role per component, password (SCRAM) over TLS only, a self-signed certificate in the data
  folder; the operator's role owns the cluster, no component runs as a superuser.
- Milvus Lite cannot authenticate: it listens on loopback only, and `ams status` says so.

The principals and their passwords are in `ams.credentials`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from ams import credentials, kafka_clients
from ams.settings import Settings
from compose.kafka_acls import Grant, Operation, Pattern, Resource, create

SCRAM = "SCRAM-SHA-512"


def password(settings: Settings, principal: str) -> str:
    found = credentials.password(settings.secrets_dir, principal)
    if found is None:
        raise SystemExit(f"{settings.secrets_dir} holds no password for {principal!r}; `ams up` makes them.")
    return found


# Kafka ---------------------------------------------------------------------------------------------------


def kafka_listeners(settings: Settings, host: str) -> str:
    """server.properties lines for the listeners, their authentication and the authorizer."""
    controller, broker = password(settings, credentials.CONTROLLER), password(settings, credentials.BROKER)
    return f"""\
listeners=CLIENT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}
advertised.listeners=CLIENT://{host}:{settings.kafka_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=CLIENT
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms={SCRAM}
sasl.mechanism.inter.broker.protocol={SCRAM}
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
required username="{credentials.BROKER}" password="{broker}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
required username="{credentials.CONTROLLER}" password="{controller}" user_{credentials.CONTROLLER}="{controller}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{credentials.ADMIN};User:{credentials.BROKER};User:{credentials.CONTROLLER}
allow.everyone.if.no.acl.found=false
"""


def kafka_scram_users(settings: Settings) -> list[str]:
    """`kafka-storage format` arguments that put every SCRAM user in the new cluster's metadata."""
    users = [*credentials.CLIENTS, credentials.BROKER]
    return [argument for user in users
            for argument in ("--add-scram", f"{SCRAM}=[name={user},password={password(settings, user)}]")]


def kafka_grants(settings: Settings) -> list[Grant]:
    """What each principal but the admin (a super user) may do. Topic names are prefixes, so that a sandbox's
    topics (``<topic>.sandbox.<owner>.<name>``) and the sandbox registry (``<events>.sandboxes``) are covered."""
    events, embeddings, dlq = settings.events_topic, settings.embeddings_topic, settings.dlq_topic
    grants = [
        # The gateway appends to the event topics and reads them (and the embeddings, for its FAISS view); it
        # makes and drops sandboxes' topics, and no other.
        *_on(credentials.GATEWAY, Resource.TOPIC, events, Pattern.PREFIXED, "READ", "WRITE", "DESCRIBE"),
        *_on(credentials.GATEWAY, Resource.TOPIC, embeddings, Pattern.PREFIXED, "READ", "DESCRIBE"),
        *_on(credentials.GATEWAY, Resource.TOPIC, f"{events}.sandbox.", Pattern.PREFIXED, "CREATE", "DELETE"),
        *_on(credentials.GATEWAY, Resource.TOPIC, f"{embeddings}.sandbox.", Pattern.PREFIXED, "CREATE", "DELETE"),
        *_on(credentials.GATEWAY, Resource.TRANSACTIONAL_ID, "ams-gateway-", Pattern.PREFIXED, "WRITE", "DESCRIBE"),
        *_on(credentials.GATEWAY, Resource.TRANSACTIONAL_ID, "ams-sandbox-", Pattern.PREFIXED, "WRITE", "DESCRIBE"),
    ]
    for projection in ("redis", "postgres", "embedder", "milvus"):
        worker = credentials.projector(projection)
        # Every worker reads the event topics (the milvus worker follows the registry of sandboxes there),
        # commits its group's offsets, and sends what it cannot apply to the dead-letter topic.
        grants += [*_on(worker, Resource.TOPIC, events, Pattern.PREFIXED, "READ", "DESCRIBE"),
                   *_on(worker, Resource.GROUP, f"ams-projection-{projection}", Pattern.LITERAL, "READ", "DESCRIBE"),
                   *_on(worker, Resource.TOPIC, dlq, Pattern.LITERAL, "WRITE", "DESCRIBE")]
    embedder, milvus = credentials.projector("embedder"), credentials.projector("milvus")
    grants += [*_on(embedder, Resource.TOPIC, embeddings, Pattern.PREFIXED, "READ", "WRITE", "DESCRIBE"),
               *_on(milvus, Resource.TOPIC, embeddings, Pattern.PREFIXED, "READ", "DESCRIBE")]
    return grants


def _on(principal: str, resource: Resource, name: str, pattern: Pattern, *operations: str) -> list[Grant]:
    return [Grant(principal, Operation[operation], resource, name, pattern) for operation in operations]


async def secure_kafka(settings: Settings) -> None:
    """Give each principal its ACLs (idempotent); the launcher runs it once the broker answers."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await create(admin, kafka_grants(settings))
    finally:
        await kafka_clients.stop(admin)


# Redis ---------------------------------------------------------------------------------------------------

# Commands no component needs that would reach beyond its keys: administration, and emptying whole databases.
_REDIS_DENIED = "-@admin -flushall -flushdb -swapdb"


def redis_acl(settings: Settings) -> str:
    """The aclfile: the hot projection owns its prefix, the embedder its own, the gateway reads both (and
    may write only a few keys, see `_gateway_writes`); workers without Redis state get no keys at all."""
    prefix = settings.redis_prefix
    live, embedder = f"{prefix}:*", f"{prefix}-embedder:*"
    rules = {
        credentials.ADMIN: "~* &* +@all",
        credentials.GATEWAY: f"%R~{live} %R~{embedder} {_gateway_writes(prefix)} &* +@all {_REDIS_DENIED}",
        credentials.projector("redis"): f"~{live} &* +@all {_REDIS_DENIED}",
        credentials.projector("embedder"): f"~{embedder} &* +@all {_REDIS_DENIED}",
        credentials.projector("postgres"): "resetchannels -@all +@connection",
        credentials.projector("milvus"): "resetchannels -@all +@connection",
    }
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [f"user {user} on >{password(settings, user)} {rule}" for user, rule in rules.items()]
    return "\n".join(lines) + "\n"


def _gateway_writes(prefix: str) -> str:
    """The keys the gateway may write: the state of the rebuilds it starts; the records and key indexes, which
    a cold read puts back when Redis had evicted them (`projections.redis_restore.warm_record`; the gateway
    could append those values to the log anyway); and the partitions' generation, checkpoint and live marker,
    which it only reads, but through scripts (that warming, and the hot-key cache's SYNC, which reads them and
    publishes in one step), and Redis checks a script's keys as written (EVAL_RO refuses a PUBLISH). Streams,
    the idempotency records and everything else stay the projection's."""
    patterns = ("rebuild:*", "*:generation", "*:ckpt", "*:live", "*:kv:*", "*:idx:*")
    return " ".join(f"%RW~{prefix}:{pattern}" for pattern in patterns)


def write_redis_acl(settings: Settings, folder: Path) -> Path:
    path = folder / "users.acl"
    write_private(path, redis_acl(settings))
    return path


# PostgreSQL ----------------------------------------------------------------------------------------------

POSTGRES_OWNER = credentials.postgres_role(credentials.ADMIN)
# The PostgreSQL projection's role owns its schemas (live, rebuilds, sandboxes); the gateway reads them, and so
# does the hot projection (it restores itself from the durable one). The other workers get no connection.
PROJECTION_OWNER = credentials.postgres_role(credentials.projector("postgres"))
READERS = tuple(credentials.postgres_role(principal)
                for principal in (credentials.GATEWAY, credentials.projector("redis")))


def postgres_tls(settings: Settings, root: Path, run_as: str | None) -> list[str]:
    """Make the server's certificate (once) and its host rules: TLS with a password, or nothing. Returns the
    server's options that use them."""
    certificate, key, rules = root / "server.crt", root / "server.key", root / "pg_hba.conf"
    if not certificate.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(certificate)], check=True, capture_output=True)
        key.chmod(0o600)
    write_private(rules, "hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n")
    if run_as is not None:
        for path in (certificate, key, rules):
            entry = pwd.getpwnam(run_as)
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
    return ["-c", "ssl=on", "-c", f"ssl_cert_file={certificate}", "-c", f"ssl_key_file={key}",
            "-c", f"hba_file={rules}"]


async def secure_postgres(settings: Settings, database: str) -> None:
    """Make each component's role with its password and privileges (idempotent), as the cluster's owner."""
    server = await asyncpg.connect(dsn_of(settings.postgres_dsn, "postgres"), timeout=10)
    try:
        for principal in credentials.CLIENTS:
            role = credentials.postgres_role(principal)
            if role == POSTGRES_OWNER:
                continue
            exists = await server.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            # token_urlsafe passwords hold no quote: safe inside the literal.
            await server.execute(f"""{"ALTER" if exists else "CREATE"} ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB
                                     NOCREATEROLE PASSWORD '{password(settings, principal)}'""")
        await server.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        await server.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{PROJECTION_OWNER}", '
                             + ", ".join(f'"{role}"' for role in READERS))
        await server.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{PROJECTION_OWNER}"')
        # The operator's sessions in the AMS database act as the projection's role, so that what its tools
        # make (a rebuild's schema, a test's) belongs to the projection, which then goes on writing it.
        await server.execute(f'ALTER ROLE "{POSTGRES_OWNER}" IN DATABASE "{database}" SET role = "{PROJECTION_OWNER}"')
    finally:
        await server.close()
    owned = await asyncpg.connect(settings.postgres_dsn, timeout=10)
    try:
        readers = ", ".join(f'"{role}"' for role in READERS)
        await owned.execute(f'SET role = "{PROJECTION_OWNER}"')
        await owned.execute(f'ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {readers}')
        await owned.execute(f'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {readers}')
    finally:
        await owned.close()


def dsn_of(dsn: str, database: str) -> str:
    """``dsn`` naming another database, its options (such as sslmode) kept."""
    address, _, options = dsn.partition("?")
    return address.rsplit("/", 1)[0] + f"/{database}" + (f"?{options}" if options else "")


# Common --------------------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write a file that holds secrets: readable by its owner only, from the first byte."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def redacted(address: str) -> str:
    """``address`` (a URL or DSN) without the password it may carry, for showing."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1@", address)


def posture(settings: Settings) -> dict[str, str]:
    """Each component's authentication and transport, as `ams status` shows them."""
    kafka_transport = "TLS" if settings.kafka_security_protocol == "SASL_SSL" else "plaintext"
    kafka_auth = f"SASL/{SCRAM} + ACLs" if settings.kafka_password else "no auth"
    tls = "sslmode=require" in settings.postgres_dsn or "sslmode=verify" in settings.postgres_dsn
    return {
        "kafka": f"{kafka_auth}, {kafka_transport}",
        "redis": ("ACL users, default off" if "@" in settings.redis_url else "no auth")
        + (", TLS" if settings.redis_url.startswith("rediss://") else ", plaintext"),
        "postgres": f"role per component (SCRAM), {'TLS' if tls else 'plaintext'}",
        "milvus-lite": "no auth (Milvus Lite cannot authenticate): loopback only",
        "projector": "metrics: no auth, loopback only",
        "gateway": "JWT bearer tokens, plaintext HTTP",
    }

