"""Communication: simulated exchange kernels (cluster mode lives in workbench.cluster)."""

from workbench.comm.kernels import (
    KERNEL_NAMES,
    Dense,
    Mean,
    Roll,
    Segment,
    Table,
    choose_kernel,
    from_matrix,
    gather,
    mix,
)

__all__ = ["KERNEL_NAMES", "Dense", "Mean", "Roll", "Segment", "Table",
           "choose_kernel", "from_matrix", "gather", "mix"]
