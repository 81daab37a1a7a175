"""The ALGORITHMS registry; each family module registers its own builders.

Builders take the engine-supplied ``loss_fn`` and ``optimizer`` (a function
``steps_per_round -> optax transformation`` built from the scenario's optimizer
keys), optionally ``graph`` (the topology's diagnostics: ``n``, ``rho``,
``lambda2_I_minus_W``, ...), ``seed`` (the run's; for draws that must agree
across peers), ``apply_fn`` (params, x -> logits), ``validation`` and
``training`` (each peer's validation or training split: x, y, size) and
``rounds`` (the run's), each only to builders that declare it, plus their own
keyword arguments from the scenario's ``algorithm`` section, and return an
``Algorithm`` whose ``rounds`` carries the round structure: the engine reads
nothing else about an algorithm.
"""

from workbench.registry import Registry

ALGORITHMS = Registry(
    "algorithm",
    context=(
        "loss_fn",
        "optimizer",
        "graph",
        "seed",
        "apply_fn",
        "validation",
        "training",
        "rounds",
    ),  # fmt: skip
)

# how a server reduces its clients' uploads (workbench.algorithms.aggregation)
AGGREGATORS = Registry("aggregator")
# the server's optax step on the pseudo-gradient (workbench.algorithms.server_opt)
SERVER_OPTIMIZERS = Registry("server optimizer")
