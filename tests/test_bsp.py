"""Sync rounds (sans-IO): rounds close once, each push is applied once, in its round."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zps.consistency import BspRounds


def test_round_closes_when_every_member_pushed() -> None:
    rounds: BspRounds[str] = BspRounds()
    for m in "abc":
        rounds.join(m)
    assert rounds.push("w", "a", "a1") == (1, [])
    assert rounds.push("w", "b", "b1") == (1, [])
    assert rounds.pending("w") == ("c",)
    target, closed = rounds.push("w", "c", "c1")
    assert target == 1
    assert [(c.round, c.payloads) for c in closed] == [(1, ("a1", "b1", "c1"))]
    assert rounds.closed("w") == 1


def test_first_round_waits_for_min_members() -> None:
    rounds: BspRounds[int] = BspRounds(min_members=2)
    rounds.join("a")
    assert rounds.push("w", "a", 1) == (1, [])  # alone, it cannot close the round
    rounds.join("b")
    _, closed = rounds.push("w", "b", 2)
    assert [c.payloads for c in closed] == [(1, 2)]


def test_second_push_before_close_goes_to_next_round() -> None:
    rounds: BspRounds[int] = BspRounds()
    rounds.join("a")
    rounds.join("b")
    rounds.push("w", "a", 1)
    assert rounds.push("w", "a", 2)[0] == 2
    assert rounds.last_round("w", "a") == 2
    _, closed = rounds.push("w", "b", 10)
    assert [(c.round, c.payloads) for c in closed] == [(1, (1, 10))]
    _, closed = rounds.push("w", "b", 20)
    assert [(c.round, c.payloads) for c in closed] == [(2, (2, 20))]


def test_leaving_member_releases_the_round() -> None:
    rounds: BspRounds[int] = BspRounds()
    rounds.join("a")
    rounds.join("b")
    rounds.push("w", "a", 1)
    closed, dropped = rounds.leave("b")
    assert [(c.round, c.members) for c in closed] == [(1, ("a",))] and dropped == []


def test_leaving_member_returns_its_queued_pushes_and_keeps_the_open_one() -> None:
    rounds: BspRounds[int] = BspRounds()
    for m in "abc":
        rounds.join(m)
    rounds.push("w", "a", 1)
    rounds.push("w", "b", 10)
    rounds.push("w", "a", 2)  # queued for round 2
    rounds.push("w", "a", 3)  # and round 3
    closed, dropped = rounds.leave("a")
    assert closed == [] and dropped == [("w", 2), ("w", 3)]
    _, closed = rounds.push("w", "c", 100)  # round 1 closes with a's push in it
    assert [c.payloads for c in closed] == [(1, 10, 100)]


def test_keys_are_independent() -> None:
    rounds: BspRounds[int] = BspRounds()
    rounds.join("a")
    rounds.push("w", "a", 1)
    assert rounds.closed("w") == 1 and rounds.closed("b") == 0


members = st.sampled_from(["a", "b", "c", "d"])
events = st.lists(
    st.tuples(st.sampled_from(["push", "join", "leave"]), members, st.sampled_from(["w", "v"])),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), events)
def test_rounds_never_close_twice_and_no_push_applies_twice(min_members: int, script) -> None:
    rounds: BspRounds[int] = BspRounds(min_members)
    applied: list[int] = []
    closed_numbers: dict[str, list[int]] = {"w": [], "v": []}
    pushed: list[int] = []
    dropped: list[int] = []
    for serial, (kind, member, key) in enumerate(script):
        if kind == "join":
            rounds.join(member)
            done = []
        elif kind == "leave":
            done, gone = rounds.leave(member)
            dropped.extend(p for _, p in gone)
        elif member in rounds.members:
            pushed.append(serial)
            _, done = rounds.push(key, member, serial)
        else:
            done = []
        for c in done:
            closed_numbers[c.key].append(c.round)
            assert len(set(c.members)) == len(c.members)  # one payload per member per round
            applied.extend(c.payloads)
    for numbers in closed_numbers.values():
        assert numbers == list(range(1, len(numbers) + 1))  # each round closes once, in order
    assert len(applied) == len(set(applied))  # no push applied twice
    assert set(applied) <= set(pushed)
    # Everyone leaves: every push is applied, dropped (and returned) or still open, once.
    for m in list(rounds.members):
        done, gone = rounds.leave(m)
        applied.extend(p for c in done for p in c.payloads)
        dropped.extend(p for _, p in gone)
    still = [p for key in ("w", "v") for p in rounds.open_payloads(key)]
    assert sorted(applied + dropped + still) == sorted(pushed)


def test_quorum_closes_with_the_first_k_and_drops_late_pushes() -> None:
    rounds: BspRounds[str] = BspRounds(quorum=2)
    for m in "abc":
        rounds.join(m)
    rounds.push("w", "a", "a1", based_on=0)
    _, closed = rounds.push("w", "b", "b1", based_on=0)
    assert [(c.payloads, c.missing) for c in closed] == [(("a1", "b1"), ("c",))]
    assert rounds.straggles["c"] == 1
    # c's push was computed from round 0, which is no longer the latest: dropped.
    assert rounds.push("w", "c", "c1", based_on=0) == (0, [])
    assert rounds.dropped["c"] == 1 and rounds.open_count("w") == 0


def test_late_pushes_can_be_folded_into_the_next_round() -> None:
    rounds: BspRounds[str] = BspRounds(quorum=1, late="fold")
    rounds.join("a")
    rounds.join("b")
    rounds.push("w", "a", "a1", based_on=0)
    target, closed = rounds.push("w", "b", "b1", based_on=0)  # late, but kept
    assert target == 2 and [c.payloads for c in closed] == [("b1",)]


def test_round_timeout_closes_with_whoever_pushed() -> None:
    rounds: BspRounds[int] = BspRounds()
    for m in "ab":
        rounds.join(m)
    assert rounds.close_now("w") == []  # nothing pushed: nothing to close
    rounds.push("w", "a", 1)
    closed = rounds.close_now("w")
    assert [(c.round, c.missing) for c in closed] == [(1, ("b",))]
    assert rounds.straggles["b"] == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.sampled_from(["drop", "fold"]), events)
def test_quorum_rounds_apply_each_push_at_most_once(quorum: int, late, script) -> None:
    rounds: BspRounds[int] = BspRounds(quorum=quorum, late=late)
    seen: dict[tuple[str, str], int] = {}
    applied: list[int] = []
    for serial, (kind, member, key) in enumerate(script):
        if kind == "join":
            rounds.join(member)
            continue
        if kind == "leave":
            done, _ = rounds.leave(member)
        elif member in rounds.members:
            _, done = rounds.push(key, member, serial, based_on=seen.get((key, member), 0))
            seen[(key, member)] = rounds.closed(key)  # the worker pulls after its push
        else:
            continue
        for c in done:
            assert len(c.payloads) >= 1
            assert not set(c.members) & set(c.missing)
            applied.extend(c.payloads)
    assert len(applied) == len(set(applied))


def test_a_member_that_leaves_starts_afresh_when_it_rejoins() -> None:
    rounds: BspRounds[int] = BspRounds()
    rounds.join("a")
    rounds.join("b")
    rounds.push("w", "a", 1)
    rounds.push("w", "a", 2)  # queued for round 2
    assert rounds.last_round("w", "a") == 2
    rounds.leave("a")
    rounds.join("a")
    assert rounds.last_round("w", "a") == 0  # its pull does not wait for a dropped round
