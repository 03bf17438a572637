"""Apache Kafka in KRaft mode, single node, from jars fetched from Maven Central and cached."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from ams.settings import Settings
from compose import security
from compose.process import ManagedProcess

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert match, f"{POM} names no <kafka.version>"
    return match.group(1)


def fetch_jars(settings: Settings) -> Path:
    """The broker's classpath folder; downloaded once per Kafka version, then reused."""
    libs = settings.cache_dir / f"kafka-{kafka_version()}" / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    print(f"Fetching Apache Kafka {kafka_version()} jars from Maven Central (once; cached in {libs})...", flush=True)
    partial = libs.with_name("libs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    result = subprocess.run(
        [
            "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(
            f"mvn could not fetch the Kafka jars (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n"
            "Check that Maven Central is reachable and retry `ams up`."
        )
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    done.touch()
    return libs


def _server_properties(settings: Settings, data_dir: Path) -> str:
    host = "127.0.0.1"
    return f"""\
# Written by `ams up`: a single KRaft node acting as broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{settings.kafka_controller_port}
{security.kafka_listeners(settings, host)}log.dirs={data_dir}
# An event store: topics are created on purpose, with their own retention.
auto.create.topics.enable=false
num.partitions={settings.partitions}
default.replication.factor=1
min.insync.replicas=1
# Internal topics on one node: replication 1, and transactions that work without a quorum of brokers.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def start(settings: Settings, process: ManagedProcess) -> None:
    """Format the storage on first start, then start the broker in the background."""
    libs = fetch_jars(settings)
    root = settings.home / "kafka"
    data_dir = root / "data"
    config = root / "server.properties"
    log4j = root / "log4j2.properties"
    root.mkdir(parents=True, exist_ok=True)
    security.write_private(config, _server_properties(settings, data_dir))  # it holds the broker's passwords
    log4j.write_text(_LOG4J2)
    classpath = f"{libs}/*"
    authenticated = root / ".scram-users"  # made with the format: this log's cluster knows the SCRAM users
    if (data_dir / "meta.properties").exists() and not authenticated.exists():
        raise SystemExit(f"{data_dir} was made before Kafka required authentication, so it knows no users. "
                         f"Stop the stack (`ams down`) and remove {settings.home} to start afresh.")
    if not (data_dir / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(
            ["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config),
             *security.kafka_scram_users(settings)],
            check=True,
            capture_output=True,
        )
        authenticated.touch()
    process.start(
        [
            "java", f"-Xmx{settings.kafka_heap}", f"-Xms{settings.kafka_heap}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={root / 'logs'}", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", classpath, "kafka.Kafka", str(config),
        ]
    )
