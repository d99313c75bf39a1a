"""Compiled topk kernels (numba): the k largest ``|x|`` without sorting or partitioning the
whole tensor.

A strided sample of the values gives a threshold that a little more than k values pass;
one pass (fused with error feedback's ``r += delta``) collects those values in index order,
and a selection among them alone (``np.partition`` of their keys, in ``sparse.py``) finds
the exact k: the largest ``|x|``, ties going to the lowest indices, which is what
``TopKCodec``'s NumPy code selects. If the sample misled
(fewer than k values passed, or more than the buffer holds), the caller runs the NumPy code.

Magnitudes are compared as bit patterns without the sign (``key``), which order as ``|x|``
does for every finite value and put inf and NaN above all of them. See ``numba_blocks`` for
``spare``, ``mask`` and read-only arguments; imported only by ``zps.codecs.kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zps.codecs.numba_blocks import jit, saturated_add

# Values accumulated at a time before they are scanned: small enough to stay in cache.
SPAN = 1 << 13
# A multiplier that spreads sample offsets (Knuth's), so a sample does not fall on one column.
SPREAD = 2654435761


@jit
def sample_keys(x: Any, d: Any, add: bool, keys: Any, spare: Any, mask: Any) -> None:
    """The keys of ``keys.size`` values spread over ``x`` (plus ``d``, saturated, if
    ``add``), one from each stretch of ``x.size // keys.size``."""
    step = x.size // keys.size
    limit = np.finfo(x.dtype).max
    value = spare.view(x.dtype)
    for j in range(keys.size):
        at = j * step + (j * SPREAD) % step
        value[0] = min(max(x[at] + d[at], -limit), limit) if add else x[at]
        keys[j] = spare[0] & mask


@jit
def _flags(bits: Any, floor: Any, mask: Any, flags: Any) -> None:
    """``flags[g]`` has bit ``l`` set where value ``8g + l`` has a key of ``floor`` or more:
    compares only, which vectorize, so the scan after them skips most values eight at a
    time."""
    for g in range(flags.size):
        m = 0
        for bit in range(8):
            m |= ((bits[8 * g + bit] & mask) >= floor) << bit
        flags[g] = m


@jit
def _keep(x: Any, i: int, key: Any, floor: Any, cap: int, k: int, found: Any, keys: Any,
          values: Any, counts: Any) -> None:
    """Count value ``i`` (its key at least ``floor``) in ``counts`` (above, equal, stored),
    and store it if there is room for it."""
    if key > floor:
        counts[0] += 1
        if counts[0] > cap:
            return
    else:
        counts[1] += 1
        if counts[1] > k:
            return
    at = counts[2]
    found[at] = i
    keys[at] = key
    values[at] = x[i]
    counts[2] = at + 1


@jit
def _scan(x: Any, start: int, stop: int, floor: Any, cap: int, k: int, found: Any,
          keys: Any, values: Any, bad: Any, mask: Any, counts: Any, flags: Any) -> bool:
    """``gather`` for values ``start:stop`` (a span); False at a key ``bad`` or more."""
    bits = x.view(keys.dtype)
    whole = (stop - start) // 8
    _flags(bits[start:stop], floor, mask, flags[:whole])
    for g in range(whole):
        m = flags[g]
        if m == 0:
            continue
        for bit in range(8):
            if (m >> bit) & 1:
                i = start + 8 * g + bit
                if (bits[i] & mask) >= bad:
                    return False
                _keep(x, i, bits[i] & mask, floor, cap, k, found, keys, values, counts)
    for i in range(start + 8 * whole, stop):
        if (bits[i] & mask) >= floor:
            if (bits[i] & mask) >= bad:
                return False
            _keep(x, i, bits[i] & mask, floor, cap, k, found, keys, values, counts)
    return True


@jit
def gather(x: Any, floor: Any, cap: int, k: int, found: Any, keys: Any, values: Any,
           bad: Any, mask: Any) -> Any:
    """Collect, in index order, every value whose key passes ``floor`` (at most ``cap``
    of them) and the first ``k`` whose key equals it.

    Returns ``(above, equal, stored)``: how many keys were above ``floor`` and equal to it
    (counted past what was stored) and how many entries were stored; ``above`` is -1 if a
    key is ``bad`` or more (inf or NaN).
    """
    counts = np.zeros(3, np.int64)
    flags = np.empty(SPAN // 8, np.uint8)
    for start in range(0, x.size, SPAN):
        if not _scan(x, start, min(start + SPAN, x.size), floor, cap, k, found, keys,
                     values, bad, mask, counts, flags):
            return -1, 0, 0
    return counts[0], counts[1], counts[2]


@jit
def gather_sum(x: Any, d: Any, floor: Any, cap: int, k: int, found: Any, keys: Any,
               values: Any, bad: Any, mask: Any) -> Any:
    """``gather`` of ``x = sat(x + d)``, each span added just before it is scanned (the
    caller has checked that ``x`` and ``d`` hold no NaN or inf)."""
    counts = np.zeros(3, np.int64)
    flags = np.empty(SPAN // 8, np.uint8)
    for start in range(0, x.size, SPAN):
        stop = min(start + SPAN, x.size)
        saturated_add(x[start:stop], d[start:stop])
        _scan(x, start, stop, floor, cap, k, found, keys, values, bad, mask, counts, flags)
    return counts[0], counts[1], counts[2]


@jit
def select(found: Any, keys: Any, values: Any, stored: int, cut: Any, need: int, idx: Any,
           sent: Any, residual: Any, clear: bool) -> None:
    """Into ``idx`` and ``sent``, in index order, the gathered entries whose key is above
    ``cut`` and the first ``need`` whose key equals it; zeroed in ``residual`` if
    ``clear``."""
    out = 0
    for j in range(stored):
        if out == idx.size:  # never, for a cut and need the caller derived: a guard
            break
        key = keys[j]
        if key > cut or (key == cut and need > 0):
            need -= 1 if key == cut else 0
            idx[out] = found[j]
            sent[out] = values[j]
            out += 1
            if clear:
                residual[found[j]] = 0


def warm(kernels: Any, x: np.ndarray, spare: np.ndarray, mask: Any) -> None:
    """Compile (or load) the signatures ``TopKCodec`` uses for ``x``'s dtype (read-only
    arguments read-only, as ``frozen`` passes them)."""
    from zps.codecs.kernels import frozen

    bad = np.array(np.inf, x.dtype).view(spare.dtype)[()]
    keys = np.empty(2 * x.size, spare.dtype)
    kernels.sample_keys(frozen(x), frozen(x), True, keys[:4], spare, mask)
    found, values = np.empty(2 * x.size, np.int64), np.empty(2 * x.size, x.dtype)
    idx, sent = np.empty(2, np.int32), np.empty(2, x.dtype)
    kernels.gather(frozen(x), mask ^ mask, x.size, 2, found, keys, values, bad, mask)
    _, _, stored = kernels.gather_sum(x.copy(), frozen(x), mask ^ mask, x.size, 2, found,
                                      keys, values, bad, mask)
    kernels.select(found, keys, values, stored, bad, 0, idx, sent, x.copy(), True)
