"""Communication: simulated exchange kernels (cluster mode lives in workbench.cluster).

Kernel arrays (``Mean | Dense | Roll | Table | Segment``) hold a mixing matrix
on the device; ``mix(arrays, tree)`` computes ``W x`` per leaf; ``from_matrix``
builds arrays from a host W and ``choose_kernel`` picks the fastest kernel.
"""

from workbench.comm.arrays import (
    KERNEL_NAMES,
    Dense,
    KernelArrays,
    Mean,
    Roll,
    Segment,
    Table,
)
from workbench.comm.host import choose_kernel, circulant_offsets, from_matrix
from workbench.comm.kernels import (
    can_convert,
    convert,
    kernel_name,
    mix,
)

__all__ = [
    "KERNEL_NAMES",
    "Dense",
    "KernelArrays",
    "Mean",
    "Roll",
    "Segment",
    "Table",
    "can_convert",
    "choose_kernel",
    "circulant_offsets",
    "convert",
    "from_matrix",
    "kernel_name",
    "mix",
]
