"""The checker itself: it must catch what it exists to catch (a run that passes proves nothing otherwise)."""

from __future__ import annotations

from commands.envelope import PUT, Event
from commands.fold import Status
from commands.keys import Position
from tests.faults.checker import Verdict, check_commands, check_order
from tests.faults.history import Ack, Command, History, Kind, Operation
from tests.faults.logview import Logged, LogView

T0 = 1_700_000_000_000


def put_command(command_id: str, seq: int, status: str, offset: int, version: int) -> Command:
    operation = Operation(command_id, PUT, "k", Position(0, offset), status, version)
    return Command(command_id, 0, seq, Kind.PUT, True, "PUT", "/v1/kv/k", {}, b"1", [operation],
                   attempts=1, http_status=200, ack=Ack.ACKNOWLEDGED)


def logged(command_id: str, offset: int, status: Status, version: int | None) -> Logged:
    return Logged(0, offset, Event(PUT, "t", "k", 1, ts=T0 + offset, command_id=command_id), status, version, "")


def test_a_command_accepted_twice_is_a_duplicate_and_one_missing_from_the_log_is_lost() -> None:
    history = History(seed=1, tenant="t", commands=[
        put_command("a", 0, "accepted", 0, 0), put_command("b", 1, "accepted", 1, 1)])
    log = LogView("t", [logged("a", 0, Status.ACCEPTED, 0), logged("a", 5, Status.ACCEPTED, 5)], {0: 5}, {}).fold()
    verdict = Verdict("unit", 1, 0)
    check_commands(history, log, verdict)
    assert len(verdict.duplicated) == 1 and "accepted 2 times" in verdict.duplicated[0]
    assert len(verdict.lost) == 1 and "id=b" in verdict.lost[0]


def test_an_answer_the_fold_does_not_give_and_versions_going_backwards_are_divergent() -> None:
    history = History(seed=1, tenant="t", commands=[
        put_command("a", 0, "accepted", 3, 3), put_command("b", 1, "accepted", 2, 2)])
    log = LogView("t", [logged("b", 2, Status.ACCEPTED, 2), logged("a", 3, Status.DUPLICATE, 2)], {0: 3}, {}).fold()
    verdict = Verdict("unit", 1, 0)
    check_commands(history, log, verdict)
    check_order(history, verdict)
    assert any("the fold says 'duplicate'" in problem for problem in verdict.divergent)
    assert any("not above 3" in problem for problem in verdict.divergent)
