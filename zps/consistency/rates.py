"""Per-worker learning rates for async and SSP: ``theta += eta_i * delta_i``.

- ``constant``: ``eta_i = lr_scale``.
- ``staleness``: ``eta_i = lr_scale / max(1, s)`` where ``s`` is how many updates the
  table received between the worker's read and its push (staleness-aware async SGD).
- ``loss``: workers report their training loss with each push; a worker whose loss falls
  faster gets a larger share: ``eta_i = lr_scale * N * u_i / sum_j u_j`` with ``u_i`` an
  exponential average of the worker's loss decrease (floored at a small positive value),
  so the rates average to ``lr_scale``.
"""

from __future__ import annotations

RATE_RULES = ("constant", "staleness", "loss")

_FLOOR = 1e-3  # the least usefulness a worker can have, so nobody is shut out for good
_CEILING = 1e30  # the most: two huge (finite) losses must not make the rates inf or NaN
_DECAY = 0.9


class Rates:
    """Computes ``eta_i`` for each applied push, by the chosen rule."""

    def __init__(self, rule: str, lr_scale: float = 1.0) -> None:
        if rule not in RATE_RULES:
            raise ValueError(f"learning-rate rule {rule!r}: use one of {', '.join(RATE_RULES)}")
        self.rule = rule
        self.lr_scale = lr_scale
        self._last_loss: dict[str, float] = {}
        self._usefulness: dict[str, float] = {}

    def leave(self, member: str) -> None:
        self._last_loss.pop(member, None)
        self._usefulness.pop(member, None)

    def observe(self, member: str, loss: float | None) -> None:
        """Note the training loss ``member`` reported with a push (once per push)."""
        useful = self._usefulness.setdefault(member, _FLOOR)
        if self.rule != "loss" or loss is None:
            return
        previous = self._last_loss.get(member)
        self._last_loss[member] = loss
        if previous is not None:
            gain = min(max(previous - loss, 0.0), _CEILING)  # the difference may overflow
            self._usefulness[member] = min(_CEILING, max(
                _FLOOR, _DECAY * useful + (1 - _DECAY) * gain))

    def eta(self, member: str, staleness: int) -> float:
        """The rate for ``member``'s push to a table ``staleness`` updates past its read."""
        if self.rule == "staleness":
            return self.lr_scale / max(1, staleness)
        if self.rule == "loss":
            total = sum(self._usefulness.values())
            share = self._usefulness.get(member, _FLOOR) / total if total > 0 else 1.0
            return self.lr_scale * len(self._usefulness) * share
        return self.lr_scale
