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
    closed = rounds.leave("b")
    assert [(c.round, c.members) for c in closed] == [(1, ("a",))]


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
    for serial, (kind, member, key) in enumerate(script):
        if kind == "join":
            rounds.join(member)
            done = []
        elif kind == "leave":
            done = rounds.leave(member)
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
    # Everyone leaves: every push of a member still present is applied, none lost.
    for m in list(rounds.members):
        for c in rounds.leave(m):
            applied.extend(c.payloads)
    assert len(applied) == len(set(applied))
