"""Per-row optimizers for row tables (sans-IO): the state lives beside each row.

A push to a row table with an optimizer carries gradients; the server takes one step per
touched row, reading and writing only those rows' state (a row untouched by a push does
not move, not even its moments: "lazy" updates, as embedding servers do). Each step gets
the touched rows' gradients, their current values and their state, already gathered, and
returns the change to add; the caller scatters the state back.

- ``sgd``: ``v = momentum * v + g``, change ``-lr * v`` (no state without momentum);
- ``adagrad``: ``a += g**2``, change ``-lr * g / (sqrt(a) + eps)``;
- ``adam``: lazy Adam, bias correction from the row's own step count;
- ``ftrl``: FTRL-Proximal (McMahan et al. 2013), per coordinate ``z`` and ``n``; the
  classic choice for sparse logistic models (start its rows at ``zeros``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.store.errors import BadRowSpec

ROW_OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl")
_SETTINGS: dict[str, dict[str, float]] = {
    "sgd": {"lr": math.nan, "momentum": 0.0},
    "adagrad": {"lr": math.nan, "eps": 1e-10, "initial": 0.0},
    "adam": {"lr": math.nan, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "ftrl": {"lr": math.nan, "beta": 1.0, "l1": 0.0, "l2": 0.0},
}
_STATE = {"sgd": ("velocity",), "adagrad": ("accum",), "adam": ("m", "v"), "ftrl": ("z", "n")}


@dataclass(frozen=True, slots=True)
class RowOptimizer:
    """One row table's optimizer settings (the state is the table's)."""

    name: str
    settings: tuple[tuple[str, float], ...]

    def get(self, key: str) -> float:
        return dict(self.settings)[key]

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.settings)}

    @property
    def state_keys(self) -> tuple[str, ...]:
        if self.name == "sgd" and self.get("momentum") == 0:
            return ()
        return _STATE[self.name]

    def initial_state(self, key: str) -> float:
        """The value a new row's state starts at."""
        return self.get("initial") if key == "accum" else 0.0

    def step(self, grads: np.ndarray, values: np.ndarray, state: dict[str, np.ndarray],
             steps: np.ndarray) -> np.ndarray:
        """The change for rows with gradients ``grads`` (n, dim) and current ``values``;
        updates ``state`` (gathered rows, written in place); ``steps`` (n,) counts this
        step for each row (1 on its first)."""
        return getattr(self, f"_{self.name}")(grads, values, state, steps)

    def _sgd(self, g: np.ndarray, w: np.ndarray, s: dict[str, np.ndarray],
             steps: np.ndarray) -> np.ndarray:
        lr = g.dtype.type(self.get("lr"))
        if "velocity" not in s:
            return -lr * g
        v = s["velocity"]
        v *= g.dtype.type(self.get("momentum"))
        v += g
        return -lr * v

    def _adagrad(self, g: np.ndarray, w: np.ndarray, s: dict[str, np.ndarray],
                 steps: np.ndarray) -> np.ndarray:
        a = s["accum"]
        a += g * g
        return -g.dtype.type(self.get("lr")) * g / (np.sqrt(a) + g.dtype.type(self.get("eps")))

    def _adam(self, g: np.ndarray, w: np.ndarray, s: dict[str, np.ndarray],
              steps: np.ndarray) -> np.ndarray:
        b1, b2 = self.get("beta1"), self.get("beta2")
        m, v = s["m"], s["v"]
        m *= g.dtype.type(b1)
        m += g.dtype.type(1 - b1) * g
        v *= g.dtype.type(b2)
        v += g.dtype.type(1 - b2) * g * g
        t = steps.astype(np.float64)[:, None]
        c1 = (1 - b1 ** t).astype(g.dtype)
        c2 = (1 - b2 ** t).astype(g.dtype)
        return -g.dtype.type(self.get("lr")) * (m / c1) / (
            np.sqrt(v / c2) + g.dtype.type(self.get("eps")))

    def _ftrl(self, g: np.ndarray, w: np.ndarray, s: dict[str, np.ndarray],
              steps: np.ndarray) -> np.ndarray:
        alpha, beta = self.get("lr"), self.get("beta")
        l1, l2 = self.get("l1"), self.get("l2")
        z, n = s["z"], s["n"]
        grown = n + g * g
        sigma = (np.sqrt(grown) - np.sqrt(n)) / g.dtype.type(alpha)
        z += g - sigma * w
        n[...] = grown
        shrunk = np.sign(z) * g.dtype.type(l1) - z
        new = np.where(np.abs(z) <= l1, 0,
                       shrunk / ((g.dtype.type(beta) + np.sqrt(n)) / g.dtype.type(alpha)
                                 + g.dtype.type(l2)))
        return (new - w).astype(g.dtype, copy=False)


def make_row_optimizer(spec: Any) -> RowOptimizer | None:
    """A ``RowOptimizer`` from an ``init_rows`` option; ``None`` for none; ``BadRowSpec``
    naming the problem otherwise."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("name") not in ROW_OPTIMIZERS:
        raise BadRowSpec(f"row optimizer must be a map with name one of {ROW_OPTIMIZERS}, "
                         f"got {spec!r:.100}")
    name = spec["name"]
    allowed = _SETTINGS[name]
    unknown = set(spec) - {"name", *allowed}
    if unknown:
        raise BadRowSpec(f"unknown {name} setting {sorted(map(str, unknown))[0]!r}; "
                         f"known: {', '.join(allowed)}")
    values = {**allowed, **{k: v for k, v in spec.items() if k != "name"}}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise BadRowSpec(f"{name} {key} must be a finite number")
    checks = {"lr": lambda x: x > 0, "eps": lambda x: x > 0,
              "momentum": lambda x: 0 <= x < 1, "beta1": lambda x: 0 <= x < 1,
              "beta2": lambda x: 0 <= x < 1}
    for key, ok in checks.items():
        if key in values and not ok(values[key]):
            raise BadRowSpec(f"{name} {key}={values[key]} is out of range")
    for key in ("initial", "beta", "l1", "l2"):
        if key in values and values[key] < 0:
            raise BadRowSpec(f"{name} {key} must be >= 0")
    return RowOptimizer(name, tuple((k, float(values[k])) for k in allowed))
