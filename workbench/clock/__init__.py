"""The virtual clock: asynchrony, stragglers, lossy links and crashes, jitted.

- ``speeds``: how long a peer's step takes (the SPEEDS registry);
- ``state``: what a clocked run carries (ClockState, Ring, Clocked, ClockSpec);
- ``delivery``: loss draws, the ring of past messages, masked weights;
- ``faults``: crashes, rejoins, the swap timeout;
- ``pairing``: AD-PSGD's random pairs;
- ``tick``: one tick, the clocked counterpart of a round;
- ``build``: a scenario's ``clock:`` section resolved for a run.
"""

from workbench.clock.build import build_clock, needs_clock
from workbench.clock.speeds import SPEEDS
from workbench.clock.state import Clocked, ClockSpec
from workbench.clock.tick import init_clocked, make_tick

__all__ = [
    "SPEEDS",
    "ClockSpec",
    "Clocked",
    "build_clock",
    "init_clocked",
    "make_tick",
    "needs_clock",
]
