"""Error feedback: what a lossy codec dropped is added to the next update, so nothing is
lost over time (the sum of decoded updates tracks the sum of the true ones)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs import arrayapi
from zps.codecs.base import Codec, Encoded, require_finite


class ErrorFeedback:
    """Per tensor name, the residual ``e``: send ``C(delta + e)``, keep
    ``e' = delta + e - D(C(delta + e))``.

    The residual is one buffer per name, made on the first push (a copy of ``delta``) and
    updated in place after: the codec's ``encode_feedback`` adds ``delta`` to it and leaves
    the new residual in it (one fused pass where kernels run). Lossless codecs keep none.
    """

    def __init__(self, codec: Codec, xp: ModuleType) -> None:
        """``TypeError`` if ``codec`` is lossy but cannot compute its own error."""
        fused = getattr(codec, "encode_feedback", None)
        if not codec.lossless and fused is None:
            raise TypeError(f"codec {codec.name} is lossy but has no encode_feedback, which "
                            "error feedback needs")
        self._fused: Callable[..., Encoded] | None = None if codec.lossless else fused
        self.codec = codec
        self.xp = xp
        self.residuals: dict[str, Any] = {}

    def encode(self, name: str, delta: Any) -> Encoded:
        """``delta`` plus the residual kept for ``name``, encoded.

        Raises ``ValueError`` if ``delta`` holds NaN or inf (the residual is left as it
        was), or if its shape or dtype differs from the residual's; if the codec refuses
        the sum (int8 or sign on float64 values beyond float32's range), the residual
        keeps it. A sum beyond the float range is clipped to it, so the residual always
        stays finite.
        """
        if self._fused is None:
            return self.codec.encode(self.xp, delta) if self.xp is np else \
                arrayapi.encode(self.codec, delta)
        if self.xp is not np:  # on a device: the residual stays there
            return arrayapi.encode_feedback(self.codec, self.residuals, name, delta)
        residual = self.residuals.get(name)
        if residual is None:
            require_finite(self.xp, delta)
            residual = self.residuals[name] = delta.copy()  # C-contiguous, delta's dtype
            return self._fused(self.xp, residual)
        if residual.shape != delta.shape or residual.dtype != delta.dtype:
            raise ValueError(f"{name!r} was {residual.dtype}{list(residual.shape)} and is now "
                             f"{delta.dtype}{list(delta.shape)}: error feedback needs the same "
                             "shape and dtype each push")
        return self._fused(self.xp, residual, delta)
