"""Small models written against the array API standard: ``xp`` is NumPy, CuPy on a GPU,
or any other standard namespace (the tests run them under ``array_api_strict``).

Each model is a pair of functions over a dict of parameters: ``init`` makes the initial
values (NumPy, so every worker starts identically from the same seed) and ``loss_grad``
returns the mean cross-entropy and its gradient for a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Model:
    """A model: how to initialise its parameters, its loss/gradient, and its predictions."""

    name: str
    init: Callable[[int, int, int], dict[str, np.ndarray]]
    loss_grad: Callable[[ModuleType, Params, Any, Any], tuple[float, Params]]
    logits: Callable[[ModuleType, Params, Any], Any]


def _softmax_xent(xp: ModuleType, logits: Any, y: Any) -> tuple[float, Any]:
    """Mean cross-entropy of ``logits`` against labels ``y``, and d loss / d logits."""
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    exp = xp.exp(shifted)
    probs = exp / xp.sum(exp, axis=1, keepdims=True)
    n, classes = logits.shape
    onehot = xp.astype(xp.reshape(y, (n, 1)) == xp.reshape(xp.arange(classes), (1, classes)),
                       probs.dtype)
    loss = float(-xp.mean(xp.log(xp.sum(probs * onehot, axis=1) + 1e-12)))
    return loss, (probs - onehot) / n


# ---------------------------------------------------------------- softmax regression


def _softmax_init(features: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros((features, classes), np.float32), "b": np.zeros(classes, np.float32)}


def _softmax_logits(xp: ModuleType, p: Params, x: Any) -> Any:
    return x @ p["w"] + p["b"]


def _softmax_loss_grad(xp: ModuleType, p: Params, x: Any, y: Any) -> tuple[float, Params]:
    loss, dlogits = _softmax_xent(xp, _softmax_logits(xp, p, x), y)
    return loss, {"w": x.T @ dlogits, "b": xp.sum(dlogits, axis=0)}


# ---------------------------------------------------------------- one-hidden-layer MLP

HIDDEN = 64


def _mlp_init(features: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((features, HIDDEN)) * np.sqrt(2.0 / features)).astype(
            np.float32
        ),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, classes)) * np.sqrt(1.0 / HIDDEN)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }


def _relu(xp: ModuleType, x: Any) -> Any:
    return xp.where(x > 0, x, xp.zeros_like(x))


def _mlp_logits(xp: ModuleType, p: Params, x: Any) -> Any:
    return _relu(xp, x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _mlp_loss_grad(xp: ModuleType, p: Params, x: Any, y: Any) -> tuple[float, Params]:
    pre = x @ p["w1"] + p["b1"]
    hidden = _relu(xp, pre)
    loss, dlogits = _softmax_xent(xp, hidden @ p["w2"] + p["b2"], y)
    dhidden = xp.where(pre > 0, dlogits @ p["w2"].T, xp.zeros_like(pre))
    return loss, {
        "w1": x.T @ dhidden,
        "b1": xp.sum(dhidden, axis=0),
        "w2": hidden.T @ dlogits,
        "b2": xp.sum(dlogits, axis=0),
    }


MODELS: dict[str, Model] = {
    "softmax": Model("softmax", _softmax_init, _softmax_loss_grad, _softmax_logits),
    "mlp": Model("mlp", _mlp_init, _mlp_loss_grad, _mlp_logits),
}


def accuracy(xp: ModuleType, model: Model, params: Params, x: Any, y: Any) -> float:
    """Fraction of ``x`` the model labels correctly."""
    right = xp.argmax(model.logits(xp, params, x), axis=1) == y
    return float(xp.mean(xp.astype(right, xp.float32)))
