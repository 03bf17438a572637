"""The checker: after a run, the history of acknowledged commands against the log and every projection.

What it proves (each violation is counted as lost, duplicated or divergent, and described):
- every acknowledged command (200, 202, 409) is in the log, under its idempotency key (the event's
  ``command_id``; a batch's operations carry ``<key>#<index>``)                                -> lost
- no command is applied twice: at most one of its events is accepted by the fold, so a retry whose
  first attempt reached the log was a duplicate                                                 -> duplicated
- the answer each command got (accepted / duplicate with the original version / 409 / pending) is
  what the fold decides for the event at the position it was given; nothing refused with a 4xx is
  in the log; each writer's acknowledged writes of one key got increasing versions; every read with
  a session token saw the key's state at or after the token, a state the log really had          -> divergent
- every projection's rows (and so its digest) equal a fresh fold of the log                        -> divergent
- every poison record is in the dead-letter topic with its position and a reason, and its
  partition moved on: a write after it was applied                                              -> lost
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from rich.console import Console
from rich.table import Table

from ams.settings import Settings
from commands.fold import Status
from commands.keys import Position, kafka_key, partition_for
from tests.faults.history import Ack, Command, History, Kind, Operation
from tests.faults.logview import KV, Logged, LogView
from tests.faults.views import Comparison, ProjectionView, compare
from tests.support import read_topic

MAX_LISTED = 12  # problems of one kind printed in full


@dataclass(frozen=True)
class Poison:
    """A record produced straight into the log that no projection can apply."""

    kind: str
    position: Position


@dataclass
class Verdict:
    scenario: str
    seed: int
    seconds: float
    commands: int = 0
    acknowledged: int = 0
    refused: int = 0
    indeterminate: int = 0
    retried: int = 0
    hung: int = 0
    reads: int = 0
    faults: int = 0
    fault_kinds: list[str] = field(default_factory=list)
    fault_log: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    divergent: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    poison: int = 0
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.divergent)

    def replay_command(self) -> str:
        return (f"AMS_FAULT_SEED={self.seed} AMS_FAULT_SECONDS={self.seconds:g} "
                f".venv/bin/python -m pytest tests/faults -m faults -s -k {shlex.quote(self.scenario)}")

    def explain(self) -> str:
        lines = [f"scenario {self.scenario!r}, seed {self.seed}: {len(self.lost)} lost, "
                 f"{len(self.duplicated)} duplicated, {len(self.divergent)} divergent"]
        for title, problems in (("lost", self.lost), ("duplicated", self.duplicated),
                                ("divergent", self.divergent)):
            for problem in problems[:MAX_LISTED]:
                lines.append(f"  {title}: {problem}")
            if len(problems) > MAX_LISTED:
                lines.append(f"  ... and {len(problems) - MAX_LISTED} more {title}")
        lines.append(f"faults injected: {'; '.join(self.fault_log) or 'none'}")
        lines.append(f"replay: {self.replay_command()}")
        return "\n".join(lines)


def check_commands(history: History, log: LogView, verdict: Verdict) -> None:
    for command in history.commands:
        for operation in command.operations:
            logged = log.by_command.get(operation.command_id, [])
            accepted = [item for item in logged if item.status is Status.ACCEPTED]
            where = f"{command.describe()} op {operation.command_id} ({operation.event_type} {operation.key})"
            if len(accepted) > 1:
                at = ", ".join(str(item.position) for item in accepted)
                verdict.duplicated.append(f"{where}: accepted {len(accepted)} times, at {at}")
            if command.ack is Ack.REFUSED:
                if logged:
                    verdict.divergent.append(f"{where}: refused with {command.http_status} but in the log at "
                                             f"{logged[0].position}")
            elif command.ack is Ack.ACKNOWLEDGED:
                if not logged:
                    verdict.lost.append(f"{where}: acknowledged with {command.http_status} "
                                        f"({operation.status} at {operation.position}) but not in the log")
                    continue
                problem = _answer_problem(operation, logged, accepted, log)
                if problem:
                    verdict.divergent.append(f"{where}: {problem}")


def _answer_problem(operation: Operation, logged: list[Logged], accepted: list[Logged], log: LogView) -> str:
    """Why the answer the writer got differs from the fold's outcome ('' when it does not)."""
    if operation.position is None:
        return f"answered {operation.status!r} without a position"
    event = log.at.get(operation.position)
    if event is None or event.event.command_id != operation.command_id:
        found = f"{event.event.command_id!r}" if event else "nothing of this tenant"
        return f"answered with position {operation.position}, where the log holds {found}"
    if operation.status == "pending":
        return ""
    if event.status.value != operation.status:
        return (f"answered {operation.status!r} but the fold says {event.status.value!r} for the event at "
                f"{operation.position} ({event.reason or 'accepted'})")
    if operation.status == "accepted" and operation.version not in (None, operation.position.offset):
        return f"answered version {operation.version} for an event at {operation.position}"
    if operation.status == "duplicate":
        originals = [item.offset for item in accepted]
        if operation.version not in originals:
            return f"answered duplicate of version {operation.version}, the log accepted it at {originals}"
    if operation.status == "rejected" and accepted:
        return f"answered 409 but the log accepted it at {accepted[0].position}"
    return ""


def check_order(history: History, verdict: Verdict) -> None:
    """Each writer waits for a command's answer before the next: its accepted versions of a key increase."""
    last: dict[tuple[int, str], tuple[int, str]] = {}
    for command in sorted(history.acknowledged(), key=lambda item: (item.writer, item.seq)):
        for operation in command.operations:
            if operation.status != "accepted" or operation.version is None or operation.event_type.startswith("s"):
                continue
            previous = last.get((command.writer, operation.key))
            if previous is not None and operation.version <= previous[0]:
                verdict.divergent.append(
                    f"writer {command.writer}: {operation.command_id} on {operation.key!r} got version "
                    f"{operation.version}, not above {previous[0]} of its earlier {previous[1]}")
            last[(command.writer, operation.key)] = (operation.version, operation.command_id)


def check_reads(history: History, log: LogView, settings: Settings, verdict: Verdict) -> None:
    """A read with a session token shows a state of the key the log had, at or after the token."""
    for read in history.reads:
        partition = partition_for(kafka_key(log.tenant, read.key), settings.partitions)
        since = read.token.get(partition, -1)
        timeline = log.timelines.get((KV, read.key))
        where = f"writer {read.writer} read {read.key!r} with token {partition}:{since}"
        if read.status == 200:
            exists, record = timeline.exact(read.version) if timeline and read.version is not None else (False, None)
            if not exists or record is None or record.deleted:
                verdict.divergent.append(f"{where}: got version {read.version}, which no accepted put made")
            elif record.value != read.value:
                verdict.divergent.append(f"{where}: version {read.version} is {record.value!r} in the log, "
                                         f"read {read.value!r}")
            elif timeline is not None and (current := timeline.at(since)) is not None \
                    and read.version is not None and read.version < current.version:
                verdict.divergent.append(f"{where}: stale read of version {read.version}; the token demands "
                                         f"at least {current.version}")
        elif read.status == 404:
            states = list(timeline.after(since)) if timeline else [None]
            if all(state is not None and not state.deleted for state in states):
                verdict.divergent.append(f"{where}: 404, but the key exists in every state from the token on")


async def check_poison(settings: Settings, poison: Sequence[Poison], history: History, log: LogView,
                       applied: dict[int, int], verdict: Verdict) -> None:
    verdict.poison = len(poison)
    if not poison:
        return
    letters: dict[Position, dict[str, object]] = {}
    for record in await read_topic(settings, settings.dlq_topic):
        about = dict(record.headers).get("ams.dead_letter")
        if about is not None:
            entry = orjson.loads(about)
            if entry.get("topic") == settings.events_topic:
                letters[Position(entry["partition"], entry["offset"])] = entry
    later: dict[int, int] = {}  # partition -> the newest acknowledged write of the workload
    for command in history.acknowledged():
        for operation in command.operations:
            if operation.position is not None and operation.status in ("accepted", "rejected", "duplicate"):
                position = operation.position
                later[position.partition] = max(later.get(position.partition, -1), position.offset)
    for item in poison:
        letter = letters.get(item.position)
        if letter is None or not letter.get("reason"):
            verdict.lost.append(f"poison record ({item.kind}) at {item.position} is not in {settings.dlq_topic} "
                                f"with a reason; the fold of the log says: "
                                f"{log.malformed.get(item.position, 'it is a valid event')}")
        if applied.get(item.position.partition, -1) < item.position.offset:
            verdict.divergent.append(f"the projection did not move past poison record {item.position}")
        if later.get(item.position.partition, -1) <= item.position.offset:
            verdict.divergent.append(f"no strong write after poison record {item.position} was applied")


async def check(settings: Settings, history: History, log: LogView, views: Sequence[ProjectionView],
                poison: Sequence[Poison], applied: dict[int, int], verdict: Verdict) -> Verdict:
    verdict.commands = len(history.commands)
    verdict.acknowledged = sum(1 for command in history.commands if command.ack is Ack.ACKNOWLEDGED)
    verdict.refused = sum(1 for command in history.commands if command.ack is Ack.REFUSED)
    verdict.indeterminate = sum(1 for command in history.commands if command.ack is Ack.INDETERMINATE)
    verdict.retried = sum(1 for command in history.commands if command.attempts > 1)
    verdict.hung = sum(command.hung for command in history.commands)
    verdict.reads = len(history.reads)
    for command in history.commands:
        if command.ack is Ack.REFUSED and command.kind is not Kind.INVALID:
            verdict.divergent.append(f"{command.describe()}: refused with {command.http_status}: "
                                     f"{orjson.dumps(command.response).decode()[:300]}")
        if command.kind is Kind.INVALID and command.ack is Ack.ACKNOWLEDGED:
            verdict.divergent.append(f"{command.describe()}: an invalid command was acknowledged")
    check_commands(history, log, verdict)
    check_order(history, verdict)
    check_reads(history, log, settings, verdict)
    await check_poison(settings, poison, history, log, applied, verdict)
    for view in views:
        comparison = await compare(view, log)
        verdict.comparisons.append(comparison)
        verdict.divergent += [f"{view.name} projection: {row}" for row in comparison.differing]
    return verdict


def summary_table(verdicts: Sequence[Verdict], title: str = "AMS fault injection") -> Table:
    table = Table(title=title)
    for column in ("scenario", "seconds", "commands", "acknowledged", "retried", "faults injected", "poison",
                   "lost", "duplicated", "divergent", "digests (log = projections)", "seed"):
        table.add_column(column, justify="left" if column in ("scenario", "digests (log = projections)") else "right")
    for verdict in verdicts:
        digests = " ".join(f"{c.view}:{c.expected_digest[:8]}{'=' if c.expected_digest == c.actual_digest else '≠'}"
                           f"{c.actual_digest[:8]}" for c in verdict.comparisons)
        colour = "green" if verdict.ok else "red"
        table.add_row(
            f"[{colour}]{verdict.scenario}[/{colour}]", f"{verdict.duration:.0f}", str(verdict.commands),
            str(verdict.acknowledged), str(verdict.retried), str(verdict.faults), str(verdict.poison),
            str(len(verdict.lost)), str(len(verdict.duplicated)), str(len(verdict.divergent)), digests,
            str(verdict.seed),
        )
    return table


def faults_by_kind(verdict: Verdict) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(Counter(verdict.fault_kinds).items()))


def print_summary(verdicts: Sequence[Verdict], console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(verdicts))
    for verdict in verdicts:
        console.print(f"{verdict.scenario}: {verdict.commands} commands ({verdict.acknowledged} acknowledged, "
                      f"{verdict.refused} refused as they should be, {verdict.indeterminate} indeterminate, "
                      f"{verdict.retried} retried), {verdict.reads} reads checked; faults: "
                      f"{faults_by_kind(verdict) or 'none'}")
        if not verdict.ok:
            console.print(f"[red]{verdict.explain()}[/red]")


__all__ = ["Command", "Poison", "Verdict", "check", "print_summary", "summary_table"]
