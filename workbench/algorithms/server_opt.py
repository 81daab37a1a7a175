"""Server optimizers (FedOpt, Reddi et al. 2021): an optax step on the pseudo-gradient.

After a round the server holds its model x and the aggregate of the uploads
a; the pseudo-gradient is ``x - a`` and the server applies one step of an
optax transformation to it. ``sgd`` with lr 1 is plain FedAvg (x <- a); with
``momentum`` it is FedAvgM. ``adam``, ``yogi`` and ``adagrad`` are FedAdam,
FedYogi and FedAdagrad, with optax's update rules (Adam's bias correction
included); for adam and yogi ``eps`` is the paper's adaptivity tau, for
adagrad optax adds it under the square root.
"""

from __future__ import annotations

import optax

from workbench.algorithms.registry import SERVER_OPTIMIZERS


@SERVER_OPTIMIZERS.register("sgd")
def _sgd(lr: float = 1.0, momentum: float = 0.0, nesterov: bool = False):
    return optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)


@SERVER_OPTIMIZERS.register("adam")
def _adam(lr: float = 0.01, b1: float = 0.9, b2: float = 0.99, eps: float = 1e-3):
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


@SERVER_OPTIMIZERS.register("yogi")
def _yogi(lr: float = 0.01, b1: float = 0.9, b2: float = 0.99, eps: float = 1e-3):
    return optax.yogi(lr, b1=b1, b2=b2, eps=eps)


@SERVER_OPTIMIZERS.register("adagrad")
def _adagrad(lr: float = 0.01, eps: float = 1e-3, initial: float = 0.0):
    return optax.adagrad(lr, initial_accumulator_value=initial, eps=eps)
