"""Server-side optimizers: pushes carry gradients and the server takes the step.

Chosen per table at ``init`` (``optimizer={"name": "adam", "lr": 1e-3}``); the state
(momentum, Adam's moments and step count) lives in the store beside the parameters. A
step writes into its state in place and returns one new array, the parameter change
(which the change log keeps): no other full-size temporary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zps.store.errors import BadOptimizer

OPTIMIZERS = ("sgd", "adam")
_SETTINGS = {"sgd": {"name", "lr", "momentum"}, "adam": {"name", "lr", "beta1", "beta2", "eps"}}


@dataclass(slots=True)
class Optimizer:
    """SGD with momentum, or Adam, over one table. ``direction`` returns the update to add."""

    name: str
    lr: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    steps: int = 0
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        """The settings, as given at init (compared when another worker inits the table)."""
        if self.name == "sgd":
            return {"name": "sgd", "lr": self.lr, "momentum": self.momentum}
        return {"name": "adam", "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}

    def direction(self, grad: np.ndarray) -> np.ndarray:
        """The parameter change for gradient ``grad`` (a new array); advances the state."""
        self.steps += 1
        if self.name == "sgd":
            return self._sgd(grad)
        return self._adam(grad)

    def _sgd(self, grad: np.ndarray) -> np.ndarray:
        out = np.empty_like(grad)  # (out= keeps a 0-d table's step an array)
        if self.momentum == 0:
            return np.multiply(grad, grad.dtype.type(-self.lr), out=out)
        velocity = self.state.get("velocity")
        if velocity is None:
            velocity = self.state["velocity"] = np.zeros_like(grad)
        velocity *= grad.dtype.type(self.momentum)
        velocity += grad
        return np.multiply(velocity, grad.dtype.type(-self.lr), out=out)

    def _adam(self, grad: np.ndarray) -> np.ndarray:
        """m, v updated in place; the step is built in its own (returned) array, which
        also serves as the scratch buffer: one allocation per step."""
        m = self.state.setdefault("m", np.zeros_like(grad))
        v = self.state.setdefault("v", np.zeros_like(grad))
        dtype = grad.dtype.type
        out = np.multiply(grad, dtype(1 - self.beta1), out=np.empty_like(grad))
        m *= dtype(self.beta1)
        m += out
        np.multiply(grad, grad, out=out)
        out *= dtype(1 - self.beta2)
        v *= dtype(self.beta2)
        v += out
        # -lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / c1, v_hat = v / c2
        c1 = 1 - self.beta1**self.steps
        c2 = 1 - self.beta2**self.steps
        np.multiply(v, dtype(1 / c2), out=out)
        np.sqrt(out, out=out)
        out += dtype(self.eps)
        np.divide(m, out, out=out)
        out *= dtype(-self.lr / c1)
        return out


def make_optimizer(spec: Any) -> Optimizer | None:
    """An ``Optimizer`` from an init option, ``None`` for none; ``BadOptimizer`` if bad."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("name") not in OPTIMIZERS:
        raise BadOptimizer(f"optimizer must be a map with name one of {OPTIMIZERS}, "
                           f"got {spec!r:.100}")
    unknown = set(spec) - _SETTINGS[spec["name"]]
    if unknown:
        raise BadOptimizer(f"unknown optimizer setting {sorted(map(str, unknown))[0]!r}")
    values = {k: v for k, v in spec.items() if k != "name"}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
        raise BadOptimizer("optimizer settings must be numbers")
    for key in ("lr", "eps"):
        if key in values and not (math.isfinite(values[key]) and values[key] > 0):
            raise BadOptimizer(f"optimizer {key} must be a finite number > 0")
    if "lr" not in values:
        raise BadOptimizer("optimizer lr must be a finite number > 0")
    for key in ("momentum", "beta1", "beta2"):
        if key in values and not 0 <= values[key] < 1:
            raise BadOptimizer(f"optimizer {key} must be in [0, 1)")
    defaults = Optimizer(spec["name"], float(values["lr"]))
    return Optimizer(
        spec["name"],
        defaults.lr,
        momentum=float(values.get("momentum", defaults.momentum)),
        beta1=float(values.get("beta1", defaults.beta1)),
        beta2=float(values.get("beta2", defaults.beta2)),
        eps=float(values.get("eps", defaults.eps)),
    )


def parse_optimizer(text: str) -> dict[str, Any] | None:
    """``sgd:LR[:MOMENTUM]`` or ``adam:LR`` (command-line form) -> an init option, or None
    for ``""``. Raises ``ValueError`` saying the accepted forms."""
    if not text:
        return None
    name, *numbers = text.split(":")
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        values = []
    if name == "sgd" and 1 <= len(values) <= 2:
        spec: dict[str, Any] = {"name": "sgd", "lr": values[0],
                                "momentum": values[1] if len(values) > 1 else 0.0}
    elif name == "adam" and len(values) == 1:
        spec = {"name": "adam", "lr": values[0]}
    else:
        raise ValueError(f"optimizer {text!r}: use sgd:LR[:MOMENTUM] or adam:LR")
    make_optimizer(spec)  # BadOptimizer is a ValueError with the reason
    return spec
