"""Message compressors: pure per-peer functions that report the bits they send.

``Compressor(init, apply)``: ``init(template) -> state``, ``apply(x, state, key)
-> (x_hat, state, bits)`` (see workbench.compression.base). A scenario names a
COMPRESSORS entry, e.g. ``compressor: {name: topk, fraction: 0.01}``; every
entry but ``identity`` takes ``per_tensor`` (compress each leaf on its own
instead of the flattened message) and ``error_feedback`` (wrap with a residual).
"""

from workbench.compression.base import (
    COMPRESSORS,
    Compressor,
    bits_dtype,
    code_bits,
    index_bits,
    stateless,
    uncompressed_bits,
    value_bits,
)
from workbench.compression.feedback import ErrorFeedbackState, error_feedback
from workbench.compression.quantize import (
    identity,
    qsgd,
    scaled_sign,
    threshold_1bit,
    threshold_2bit,
    uniform,
)
from workbench.compression.sparsify import randomk, topk

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "ErrorFeedbackState",
    "bits_dtype",
    "code_bits",
    "error_feedback",
    "identity",
    "index_bits",
    "qsgd",
    "randomk",
    "scaled_sign",
    "stateless",
    "threshold_1bit",
    "threshold_2bit",
    "topk",
    "uncompressed_bits",
    "uniform",
    "value_bits",
]
