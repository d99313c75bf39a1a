"""Sans-IO consistency logic: when a pushed update may be applied and a pull answered."""

from zps.consistency.bsp import BspRounds, ClosedRound

__all__ = ["BspRounds", "ClosedRound"]
