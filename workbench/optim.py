"""Local optimizers and learning-rate schedules from the scenario, as optax chains.

``algorithm.optimizer`` names an OPTIMIZERS entry, ``algorithm.schedule`` a
SCHEDULES entry; weight decay (decoupled) and global-norm clipping are chained
in front. The L2 term ``l2/2 ||p||^2`` belongs to the loss (workbench.objective).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optax

from workbench.registry import Registry

SCHEDULES = Registry("schedule", context=("lr", "total_steps"))
OPTIMIZERS = Registry("optimizer", context=("learning_rate", "momentum", "nesterov"))


@SCHEDULES.register("constant")
def constant(lr: float, total_steps: int) -> optax.Schedule:
    del total_steps
    return optax.constant_schedule(lr)


@SCHEDULES.register("cosine")
def cosine(lr: float, total_steps: int, *, alpha: float = 0.0) -> optax.Schedule:
    return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=alpha)


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(
    lr: float, total_steps: int, *, warmup_steps: int = 100, end_value: float = 0.0
) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1), end_value
    )


@SCHEDULES.register("step")
def step(
    lr: float, total_steps: int, *, boundaries: list[int], factor: float = 0.1
) -> optax.Schedule:
    del total_steps
    return optax.piecewise_constant_schedule(lr, {int(b): factor for b in boundaries})


@SCHEDULES.register("exponential")
def exponential(
    lr: float,
    total_steps: int,
    *,
    transition_steps: int,
    decay_rate: float,
    staircase: bool = True,
) -> optax.Schedule:
    """lr * decay_rate ** (step / transition_steps); staircase: PyTorch's StepLR."""
    del total_steps
    return optax.exponential_decay(
        lr, transition_steps, decay_rate, staircase=staircase
    )


def _or(momentum, default):
    """``momentum or default`` for a number; an array (state) is kept as is."""
    return momentum if not isinstance(momentum, int | float) or momentum else default


@OPTIMIZERS.register("sgd")
def sgd(learning_rate, momentum: float, nesterov: bool):
    return optax.sgd(learning_rate, momentum=_or(momentum, None), nesterov=nesterov)


@OPTIMIZERS.register("momentum")
def momentum_sgd(learning_rate, momentum: float, nesterov: bool):
    return optax.sgd(learning_rate, momentum=_or(momentum, 0.9), nesterov=nesterov)


# optimizers whose momentum can be state: it enters their update as the
# constant would (g + momentum * trace), so the numbers do not change; Adam's
# b1 would (1 - b1 in float32 is not the constant's rounding)
MOMENTUM_AS_STATE = ("sgd", "momentum")


@OPTIMIZERS.register("adam")
def adam(learning_rate, momentum: float, nesterov: bool):
    del nesterov
    return optax.adam(learning_rate, b1=momentum or 0.9)


@OPTIMIZERS.register("adamw")
def adamw(learning_rate, momentum: float, nesterov: bool):
    del nesterov
    return optax.adamw(learning_rate, b1=momentum or 0.9, weight_decay=0.0)


def learning_rate(
    lr: float = 0.1, *, schedule: dict | None = None, total_steps: int = 1, **_: Any
) -> optax.Schedule:
    """The step size at each optimizer step (the scenario's lr and schedule)."""
    schedule = dict(schedule or {"name": "constant"})
    return SCHEDULES.build(
        schedule, "algorithm.schedule", lr=lr, total_steps=total_steps
    )


def make_optimizer(
    name: str = "sgd",
    *,
    lr: float = 0.1,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    clip: float | None = None,
    schedule: dict | None = None,
    total_steps: int = 1,
) -> optax.GradientTransformation:
    """The local optimizer: clip -> decoupled weight decay -> base(schedule).

    With a constant schedule the step size (and SGD's nonzero momentum) is
    an array of the optimizer's state (``optax.inject_hyperparams``), not a
    constant of the compiled program: runs that differ only in them share
    their compiled chunk (a sweep's learning rates and momenta) and can run
    as replicas of one program.
    """
    build = OPTIMIZERS.lookup(name, "algorithm.optimizer")
    if _constant(schedule):
        state_momentum = bool(momentum) and name in MOMENTUM_AS_STATE
        base = optax.inject_hyperparams(
            lambda learning_rate, momentum: build(learning_rate, momentum, nesterov),
            static_args=() if state_momentum else ("momentum",),
        )(learning_rate=lr, momentum=momentum)
    else:
        lr_fn = learning_rate(lr, schedule=schedule, total_steps=total_steps)
        base = build(lr_fn, momentum, nesterov)
    parts = []
    if clip:
        parts.append(optax.clip_by_global_norm(clip))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    return optax.chain(*parts, base) if parts else base


def _constant(schedule: dict | None) -> bool:
    return schedule is None or dict(schedule) == {"name": "constant"}


class LocalOptimizer(NamedTuple):
    """What algorithm builders get as ``optimizer``: the scenario's optimizer keys.

    ``optimizer(steps_per_round)`` is the optax chain; ``learning_rate`` the
    step size schedule, for algorithms whose closed-form steps need it
    (edge-consensus learning: alpha = lr).
    """

    config: dict  # make_optimizer's keyword arguments (name, lr, ..., schedule)
    rounds: int  # rounds of the run (schedules span rounds x steps per round)

    def __call__(self, steps_per_round: int) -> optax.GradientTransformation:
        return make_optimizer(**self.config, total_steps=self.total(steps_per_round))

    def learning_rate(self, steps_per_round: int) -> optax.Schedule:
        return learning_rate(**self.config, total_steps=self.total(steps_per_round))

    def total(self, steps_per_round: int) -> int:
        return self.rounds * steps_per_round


def local_optimizer(lr: float, rounds: int = 1, **config) -> LocalOptimizer:
    """A LocalOptimizer from ``make_optimizer`` keywords (``name`` defaults to sgd)."""
    return LocalOptimizer({"lr": lr, **config}, rounds)
