"""Aggregation rules, rate rules and server-side optimizers, as plain functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zps.consistency.aggregate import aggregate, parse_rule, trim_count
from zps.consistency.rates import Rates
from zps.store import BadOptimizer, make_optimizer


def ups(*values: float) -> list[np.ndarray]:
    return [np.full(3, v, np.float32) for v in values]


def test_rules_on_known_inputs() -> None:
    updates = ups(1, 2, 3, 1e9)
    assert aggregate(parse_rule("mean"), ups(1, 2, 6), [1, 1, 1])[0] == 3
    assert aggregate(parse_rule("weighted"), ups(1, 2, 6), [1, 1, 2])[0] == pytest.approx(3.75)
    assert aggregate(parse_rule("median"), updates, [1] * 4)[0] == 2.5
    assert aggregate(parse_rule("trimmed:0.25"), updates, [1] * 4)[0] == 2.5
    assert aggregate(parse_rule("trimmed"), ups(1, 2, 1e9), [1] * 3)[0] == 2


def test_weighted_rule_with_zero_and_single_weights() -> None:
    rule = parse_rule("weighted")
    np.testing.assert_array_equal(aggregate(rule, ups(5), [0]), 0)  # weight 0: no change
    np.testing.assert_array_equal(aggregate(rule, ups(5), [3]), 5)
    np.testing.assert_array_equal(aggregate(rule, ups(5, 9), [0, 0]), 0)


def test_rule_parsing() -> None:
    assert str(parse_rule("trimmed:0.2")) == "trimmed:0.2"
    for bad in ("avg", "median:3", "trimmed:0.5", "trimmed:x"):
        with pytest.raises(ValueError):
            parse_rule(bad)
    assert [trim_count(0.1, n) for n in (1, 2, 3, 10, 30)] == [0, 0, 1, 1, 3]


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=150, deadline=None)
@given(st.integers(3, 9).flatmap(
    lambda n: st.lists(arrays(np.float32, 4, elements=finite), min_size=n, max_size=n)))
def test_median_and_trimmed_ignore_one_huge_worker(honest: list[np.ndarray]) -> None:
    attacked = [*honest, np.full(4, 1e30, np.float32)]
    lo = np.min(np.stack(honest), axis=0)
    hi = np.max(np.stack(honest), axis=0)
    for rule in ("median", "trimmed:0.1"):
        got = aggregate(parse_rule(rule), attacked, [1.0] * len(attacked))
        assert np.all(got >= lo - 1e-3) and np.all(got <= hi + 1e-3)
    mean = aggregate(parse_rule("mean"), honest, [1.0] * len(honest))
    np.testing.assert_allclose(mean, np.mean(np.stack(honest), axis=0), rtol=1e-5, atol=1e-4)


def test_staleness_rule_divides_by_versions_behind() -> None:
    rates = Rates("staleness", lr_scale=0.9)
    assert [rates.eta("w", s) for s in (0, 1, 3)] == [0.9, 0.9, pytest.approx(0.3)]


def test_loss_rule_favours_the_worker_whose_loss_falls() -> None:
    rates = Rates("loss", lr_scale=1.0)
    for step in range(20):
        rates.observe("good", 2.0 - 0.1 * step)
        rates.observe("flat", 2.0)
    good, flat = rates.eta("good", 0), rates.eta("flat", 0)
    assert good > 1.5 > 0.5 > flat and good + flat == pytest.approx(2.0)


def test_sgd_momentum_and_adam_steps() -> None:
    sgd = make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.5})
    assert sgd is not None
    grad = np.ones(2, np.float32)
    np.testing.assert_allclose(sgd.direction(grad), -0.1)
    np.testing.assert_allclose(sgd.direction(grad), -0.15)  # v = 0.5 * 1 + 1
    adam = make_optimizer({"name": "adam", "lr": 0.01})
    assert adam is not None
    # Adam's first step is -lr * sign(grad) (bias-corrected moments).
    np.testing.assert_allclose(adam.direction(np.array([3.0, -2.0], np.float32)),
                               [-0.01, 0.01], rtol=1e-4)


@pytest.mark.parametrize("spec", [
    {"name": "rmsprop", "lr": 0.1}, {"name": "sgd"}, {"name": "sgd", "lr": -1},
    {"name": "adam", "lr": 0.1, "beta1": 1.5}, {"name": "sgd", "lr": 0.1, "nesterov": 1},
    "adam", {"name": "sgd", "lr": "fast"}, {"name": "adam", "lr": 0.1, "eps": 0},
    {"name": "sgd", "lr": float("inf")}, {"name": "adam", "lr": 0.1, "eps": float("nan")},
])
def test_bad_optimizer_specs_are_refused(spec: object) -> None:
    with pytest.raises(BadOptimizer):
        make_optimizer(spec)


def test_loss_rule_stays_finite_with_huge_losses() -> None:
    """Regression: two finite but huge losses made eta NaN (inf / inf) and the table NaN."""
    rates = Rates("loss", 0.5)
    for member in ("a", "b"):
        rates.observe(member, 1e308)
    rates.observe("a", -1e308)  # the decrease overflows to inf
    rates.observe("b", 1e308)
    for member in ("a", "b"):
        assert math.isfinite(rates.eta(member, 1)) and rates.eta(member, 1) >= 0
