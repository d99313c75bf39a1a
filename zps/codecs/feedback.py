"""Error feedback: what a lossy codec dropped is added to the next update, so nothing is
lost over time (the sum of decoded updates tracks the sum of the true ones)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from zps.codecs.base import Codec, Encoded


class ErrorFeedback:
    """Per table, the residual ``e``: send ``C(delta + e)``, keep ``e' = delta + e - D(C(...))``."""

    def __init__(self, codec: Codec, xp: ModuleType) -> None:
        self.codec = codec
        self.xp = xp
        self.residuals: dict[str, Any] = {}

    def encode(self, name: str, delta: Any) -> Encoded:
        residual = self.residuals.get(name)
        compensated = delta + residual if residual is not None else delta.copy()
        encoded = self.codec.encode(self.xp, compensated)
        if not self.codec.lossless:
            self.residuals[name] = compensated - self._decoded(encoded)
        return encoded

    def _decoded(self, encoded: Encoded) -> Any:
        """The decoded update, on the encoder's device."""
        import numpy as np

        from zps.codecs.base import decode

        host = Encoded(encoded.codec, encoded.shape, encoded.dtype,
                       tuple(_to_host(p) for p in encoded.parts), encoded.params)
        dense = decode(self.codec, host)
        return dense if self.xp is np else self.xp.asarray(dense)


def _to_host(array: Any) -> Any:
    return array.get() if hasattr(array, "get") else array
