"""Sans-IO consistency logic: when a pushed update may be applied and a pull answered."""

from zps.consistency.bsp import BspRounds, ClosedRound, LatePolicy
from zps.consistency.ssp import SspClocks

__all__ = ["BspRounds", "ClosedRound", "LatePolicy", "SspClocks"]
