"""Bounded staleness (sans-IO): no worker reads while more than K clocks ahead."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zps.consistency import SspClocks


def test_fast_worker_waits_for_the_slowest() -> None:
    clocks = SspClocks(staleness=2)
    clocks.join("fast")
    clocks.join("slow")
    for _ in range(2):
        clocks.tick("w", "fast")
    assert clocks.may_read("w", "fast")  # 2 ahead: allowed
    clocks.tick("w", "fast")
    assert not clocks.may_read("w", "fast")  # 3 ahead: held
    clocks.tick("w", "slow")
    assert clocks.may_read("w", "fast")


def test_dead_worker_never_holds_the_others() -> None:
    clocks = SspClocks(staleness=0)
    clocks.join("a")
    clocks.join("dead")
    clocks.tick("w", "a")
    assert not clocks.may_read("w", "a")
    clocks.leave("dead")
    assert clocks.may_read("w", "a")


def test_late_joiner_starts_at_the_slowest_clock() -> None:
    clocks = SspClocks(staleness=1)
    clocks.join("a")
    for _ in range(10):
        clocks.tick("w", "a")
    clocks.join("new")
    assert clocks.clock("w", "new") == 10 and clocks.may_read("w", "a")


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError):
        SspClocks(-1)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(st.tuples(st.sampled_from(["step", "die", "join"]), st.integers(0, 3)),
             max_size=120),
)
def test_no_read_is_ever_more_than_k_ahead(k: int, script) -> None:
    """Workers loop read -> compute -> push; a worker held at its read cannot push."""
    clocks = SspClocks(k)
    for w in range(4):
        clocks.join(f"w{w}")
    for action, w in script:
        member = f"w{w}"
        if action == "die":
            clocks.leave(member)
        elif action == "join":
            clocks.join(member)
        elif member in clocks.members and clocks.may_read("t", member):
            # The read is answered: the bound holds against every live worker.
            assert clocks.clock("t", member) - clocks.slowest("t") <= k
            clocks.tick("t", member)
    # Whoever is live can always make progress eventually: the slowest may read.
    slowest = [m for m in clocks.members if clocks.clock("t", m) == clocks.slowest("t")]
    assert all(clocks.may_read("t", m) for m in slowest)
