"""The fold: examples of each rule, and properties that make replays and batching harmless."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from commands.envelope import DELETE, PATCH, PUT, STREAM_APPEND, Event
from commands.fold import (
    IDEMPOTENCY_WINDOW_MS,
    MAX_REMEMBERED_COMMANDS,
    Record,
    Remembered,
    Status,
    apply,
    consults_index,
    fold,
    merge_patch,
    visible,
)

T0 = 1_700_000_000_000


def put(value: object, ts: int = T0, **options: object) -> Event:
    return Event(PUT, "acme", "k", value, ts=ts, **options)  # type: ignore[arg-type]


def test_put_then_delete_leaves_a_tombstone_that_readers_do_not_see() -> None:
    record, outcomes = fold([(put(1), 10), (Event(DELETE, "acme", "k", ts=T0 + 1), 11)])
    assert [outcome.status for outcome in outcomes] == [Status.ACCEPTED, Status.ACCEPTED]
    assert record is not None and record.deleted and record.version == 11
    assert visible(record, T0 + 2) is None


def test_conditional_write_on_the_current_version_wins_and_a_stale_one_loses() -> None:
    record, outcomes = fold([(put(1), 5), (put(2, if_version=5), 6), (put(3, if_version=5), 7)])
    assert [outcome.status for outcome in outcomes] == [Status.ACCEPTED, Status.ACCEPTED, Status.REJECTED]
    assert "version 6" in outcomes[2].reason
    assert record is not None and record.value == 2 and record.version == 6


def test_create_only_loses_against_an_existing_key_but_wins_after_delete_or_expiry() -> None:
    _, outcomes = fold([(put(1), 1), (put(2, ts=T0 + 1, if_absent=True), 2)])
    assert outcomes[1].status is Status.REJECTED
    deleted = Event(DELETE, "acme", "k", ts=T0 + 1)
    _, outcomes = fold([(put(1), 1), (deleted, 2), (put(2, ts=T0 + 2, if_absent=True), 3)])
    assert outcomes[2].status is Status.ACCEPTED
    _, outcomes = fold([(put(1, ttl_ms=100), 1), (put(2, ts=T0 + 100, if_absent=True), 2)])
    assert outcomes[1].status is Status.ACCEPTED


def test_expiry_is_counted_from_the_events_own_timestamp() -> None:
    record, _ = fold([(put(1, ttl_ms=1000), 1)])
    assert record is not None and record.expires_at == T0 + 1000
    assert visible(record, T0 + 999) is not None and visible(record, T0 + 1000) is None


def test_a_retried_command_applies_once_and_reports_the_original_version() -> None:
    record, outcomes = fold([(put(1, command_id="c1"), 4), (put(2), 5), (put(1, ts=T0 + 5, command_id="c1"), 6)])
    assert outcomes[2].status is Status.DUPLICATE and outcomes[2].version == 4
    assert record is not None and record.value == 2
    late = put(1, ts=T0 + IDEMPOTENCY_WINDOW_MS, command_id="c1")
    assert apply(record, late, 7).status is Status.ACCEPTED


def test_a_retry_is_a_duplicate_however_many_commands_the_key_accepted_since() -> None:
    between = [(put(n, ts=T0 + n, command_id=f"other-{n}"), n) for n in range(1, MAX_REMEMBERED_COMMANDS + 9)]
    retry = put(0, ts=T0 + 99, command_id="retried")
    record, outcomes = fold([(put(0, command_id="retried"), 0), *between, (retry, 99)])
    assert outcomes[-1].status is Status.DUPLICATE and outcomes[-1].version == 0
    assert record is not None and record.value == MAX_REMEMBERED_COMMANDS + 8
    # The record alone remembers only the last few: the command index (``seen``) holds the rest.
    assert consults_index(record) and "retried" not in {entry[0] for entry in record.commands}
    assert apply(record, retry, 99).status is Status.ACCEPTED
    assert apply(record, retry, 99, ("retried", 0, T0)).status is Status.DUPLICATE
    assert apply(record, put(0, ts=T0 + IDEMPOTENCY_WINDOW_MS, command_id="retried"), 99,
                 ("retried", 0, T0)).status is Status.ACCEPTED


def test_only_a_full_list_forgets_and_each_forgotten_command_is_reported_once() -> None:
    events = [(put(n, ts=T0 + n, command_id=f"c{n}"), n) for n in range(MAX_REMEMBERED_COMMANDS + 3)]
    index: dict[str, Remembered] = {}
    _, outcomes = fold(events, index=index)
    forgotten = [outcome.forgotten for outcome in outcomes if outcome.forgotten is not None]
    assert forgotten == [("c0", 0, T0), ("c1", 1, T0 + 1), ("c2", 2, T0 + 2)]
    assert index == {entry[0]: entry for entry in forgotten}
    assert not any(consults_index(outcome.record) for outcome in outcomes[:MAX_REMEMBERED_COMMANDS - 1])


def test_folding_in_two_parts_with_the_index_equals_folding_everything() -> None:
    ids = [f"c{n % 45}" for n in range(120)]  # every id comes back after more than 32 others
    events = [(put(n, ts=T0 + n, command_id=command_id), n) for n, command_id in enumerate(ids)]
    whole, outcomes = fold(events)
    index: dict[str, Remembered] = {}
    middle, first = fold(events[:70], index=index)
    rest, second = fold(events[70:], middle, dict(index))
    assert rest == whole and [o.status for o in first + second] == [o.status for o in outcomes]
    assert [o.status for o in outcomes].count(Status.ACCEPTED) == 45


def test_a_stream_counts_its_appends_and_a_retried_append_is_a_duplicate() -> None:
    def append(step: int, command_id: str) -> Event:
        return Event(STREAM_APPEND, "acme", "run", {"step": step}, ts=T0 + step, command_id=command_id)

    record, outcomes = fold([(append(1, "a"), 3), (append(2, "b"), 4), (append(1, "a"), 9)])
    assert [outcome.status for outcome in outcomes] == [Status.ACCEPTED, Status.ACCEPTED, Status.DUPLICATE]
    assert outcomes[2].version == 3
    assert record is not None and record.value == 2 and record.version == 4


def test_merge_patch_follows_rfc_7396() -> None:
    rfc_example = merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}})
    assert rfc_example == {"a": "z", "c": {"d": "e"}}
    assert merge_patch([1], {"a": 1}) == {"a": 1}
    assert merge_patch({"a": 1}, {"a": [1, {"b": None}]}) == {"a": [1, {"b": None}]}
    record, _ = fold([(put({"a": 1}, ttl_ms=50), 1), (Event(PATCH, "acme", "k", {"b": 2}, ts=T0 + 1), 2)])
    assert record is not None and record.value == {"a": 1, "b": 2} and record.expires_at == T0 + 50


# --- properties ---------------------------------------------------------------------------------

patches = st.dictionaries(st.sampled_from("abc"), st.integers(0, 3) | st.none(), max_size=3)
values = st.one_of(st.integers(-5, 5), st.text(max_size=3), patches)


@st.composite
def event_sequences(draw: st.DrawFn) -> list[tuple[Event, int]]:
    events = []
    ts = T0
    for offset in range(draw(st.integers(0, 25))):
        ts += draw(st.integers(0, 2000))
        kind = draw(st.sampled_from([PUT, PUT, PATCH, DELETE]))
        data = draw(patches if kind == PATCH else values)
        events.append((Event(
            kind, "acme", "k", None if kind == DELETE else data, ts=ts,
            command_id=draw(st.none() | st.sampled_from(["c1", "c2", "c3"])),
            if_version=draw(st.none() | st.integers(0, offset)),
            if_absent=draw(st.booleans()) if draw(st.booleans()) else False,
            ttl_ms=draw(st.none() | st.integers(1, 3000)),
        ), offset))
    return events


def fold_in_batches(events: list[tuple[Event, int]], cuts: list[int], replayed: int) -> Record | None:
    """Fold as a projection does: in batches, skipping what its checkpoint says it already applied,
    after first re-delivering ``replayed`` events of the log (at-least-once delivery)."""
    checkpoint, record = -1, None
    delivery = events[:replayed] + events
    bounds = sorted({0, len(delivery), *[cut % (len(delivery) + 1) for cut in cuts]})
    for start, end in itertools.pairwise(bounds):
        for event, offset in delivery[start:end]:
            if offset <= checkpoint:
                continue
            record = apply(record, event, offset).record
            checkpoint = offset
    return record


@settings(max_examples=300, deadline=None)
@given(event_sequences(), st.lists(st.integers(0, 60), max_size=6), st.integers(0, 25))
def test_batching_and_replayed_prefixes_do_not_change_the_state(events, cuts, replayed) -> None:  # type: ignore[no-untyped-def]
    expected, _ = fold(events)
    assert fold_in_batches(events, cuts, min(replayed, len(events))) == expected


@settings(max_examples=300, deadline=None)
@given(event_sequences())
def test_folding_a_prefix_then_the_rest_equals_folding_everything(events) -> None:  # type: ignore[no-untyped-def]
    for cut in range(len(events) + 1):
        middle, _ = fold(events[:cut])
        assert fold(events[cut:], middle)[0] == fold(events)[0]


@settings(max_examples=200, deadline=None)
@given(event_sequences())
def test_only_accepted_events_change_the_record_and_versions_grow(events) -> None:  # type: ignore[no-untyped-def]
    record: Record | None = None
    for event, offset in events:
        outcome = apply(record, event, offset)
        if outcome.accepted:
            assert outcome.record is not None and outcome.record.version == offset
        else:
            assert outcome.record == record
        record = outcome.record
