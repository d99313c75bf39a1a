"""Block-scaled quantization: ``int8`` (stochastic rounding) and ``sign`` (1 bit a value).

Both cut the tensor into blocks of ``block`` values (default 256), each with its own float32
scale, so one large value does not flatten the precision of the whole tensor.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import DECODE_BLOCK, Encoded, flat, require_finite

DEFAULT_BLOCK = 256


def _blocks(size: int, block: int) -> int:
    return math.ceil(size / block) if size else 0


def _padded(xp: ModuleType, values: Any, block: int) -> Any:
    """``values`` zero-padded to whole blocks, as a (blocks, block) array."""
    pad = (-values.size) % block
    if pad:
        values = xp.concatenate([values, xp.zeros(pad, values.dtype)])
    return values.reshape(-1, block)


class Int8Codec:
    """8 bits a value: ``q = floor(x / s + u)``, ``u ~ U[0, 1)``, ``s = max|x| / 127`` per
    block. Stochastic rounding makes it unbiased (E[s * q] = x); error <= s per value."""

    name = "int8"
    lossless = False

    def __init__(self, block: int = DEFAULT_BLOCK, seed: int | None = None) -> None:
        self.block = block
        self._rng = np.random.default_rng(seed)

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        require_finite(xp, array)
        values = flat(array).astype(xp.float32)
        blocks = _padded(xp, values, self.block)
        scales = xp.abs(blocks).max(axis=1) / 127.0 if blocks.size else xp.zeros(0, xp.float32)
        safe = xp.where(scales > 0, scales, 1.0)[:, None]
        noise = self._uniform(xp, blocks.shape)
        q = xp.clip(xp.floor(blocks / safe + noise), -127, 127).astype(xp.int8)
        return Encoded(self.name, tuple(array.shape), str(array.dtype),
                       (q.reshape(-1)[:values.size], scales.astype(xp.float32)),
                       {"block": self.block})

    def _uniform(self, xp: ModuleType, shape: tuple[int, ...]) -> Any:
        if xp is np:
            return self._rng.random(shape, dtype=np.float32)
        return xp.random.random(shape, dtype=xp.float32)  # cupy: on the device

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("int8", size), ("float32", _blocks(size, _block_param(params)))]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        q, scales = (np.asarray(p) for p in encoded.parts)
        block = _block_param(encoded.params)
        target = out.reshape(-1)
        step = max(block, DECODE_BLOCK // block * block)
        for start in range(0, target.size, step):
            chunk = q[start:start + step].astype(out.dtype)
            s = np.repeat(scales[start // block:(start + chunk.size + block - 1) // block], block)
            chunk *= s[:chunk.size].astype(out.dtype)
            if scale != 1.0:
                chunk *= scale
            target[start:start + step] += chunk


class SignCodec:
    """1 bit a value plus a scale per block (the mean |x|): signSGD / 1-bit SGD. Biased:
    use it with error feedback."""

    name = "sign"
    lossless = False

    def __init__(self, block: int = DEFAULT_BLOCK) -> None:
        self.block = block

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        require_finite(xp, array)
        values = flat(array).astype(xp.float32)
        blocks = _padded(xp, values, self.block)
        counts = xp.minimum(self.block, values.size - xp.arange(blocks.shape[0]) * self.block)
        scales = (xp.abs(blocks).sum(axis=1) / xp.maximum(counts, 1)).astype(xp.float32)
        bits = xp.packbits(values >= 0)
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (bits, scales),
                       {"block": self.block})

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("uint8", math.ceil(size / 8)), ("float32", _blocks(size, _block_param(params)))]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        bits, scales = (np.asarray(p) for p in encoded.parts)
        block = _block_param(encoded.params)
        target = out.reshape(-1)
        step = max(block, DECODE_BLOCK // block * block)  # a multiple of 8 and of block
        step -= step % 8
        for start in range(0, target.size, step):
            n = min(step, target.size - start)
            signs = np.unpackbits(bits[start // 8:(start + n + 7) // 8])[:n].astype(out.dtype)
            signs = signs * 2 - 1
            s = np.repeat(scales[start // block:(start + n + block - 1) // block], block)
            signs *= s[:n].astype(out.dtype)
            if scale != 1.0:
                signs *= scale
            target[start:start + n] += signs


def _block_param(params: dict[str, Any]) -> int:
    block = params.get("block", DEFAULT_BLOCK)
    if not isinstance(block, int) or isinstance(block, bool) or not 8 <= block <= 1 << 20 \
            or block % 8:
        from zps.errors import ProtocolError

        raise ProtocolError("bad_header", "codec block must be a multiple of 8 in [8, 2**20]")
    return block
