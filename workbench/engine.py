"""The engine: builds a simulation from a scenario and runs it in jitted chunks.

Python runs only between chunks (evaluation, logging, checkpoint, progress);
each chunk is ``eval_every`` rounds under one ``lax.scan``. See rounds.py for
the jitted core and results.py for the run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from workbench.algorithms import ALGORITHMS
from workbench.clock import build_clock, init_clocked, needs_clock
from workbench.clock.redistribute import per_sample_loss
from workbench.comm.messages import plain
from workbench.data import load_federated
from workbench.errors import ScenarioError
from workbench.evaluation import make_evaluate
from workbench.execution import default_strategy, lift, peer_step_cost
from workbench.memory import StateEstimate, out_of_memory_guard, tree_bytes
from workbench.models import build_model, init_params, num_params
from workbench.objective import make_loss
from workbench.optim import LocalOptimizer
from workbench.privacy.messages import model_part
from workbench.privacy.shadow_runs import RunSetup
from workbench.privacy.stage import Attacker, check_marginalized, check_privacy
from workbench.rounds import (
    TOPOLOGY,
    Capture,
    EvalData,
    PeerData,
    RoundSpec,
    chunk_body,
    init_state,
    make_chunk,
    make_phases,
    make_round,
    peer_topology,
    root_key,
    round_key,
)
from workbench.scenario import algorithm_parts
from workbench.sharding import (
    jit_chunk,
    peer_mesh,
    per_device,
    replicate,
    resolve_devices,
    shard_peers,
)
from workbench.topology import build_topology

EVAL_BATCH = 32
EVAL_TRAIN_PER_PEER = 512
# Evaluation lifts at most this many peers at once (lax.map over chunks), so its
# activations stay bounded whatever n: for the CNN on digits at n = 16 this cut
# evaluation temporaries 404 -> 106 MiB and time 531 -> 414 ms; for the MLP the
# time was unchanged (2.5 ms at n = 16, 9.6 -> 12 ms at n = 64).
EVAL_PEERS_PER_CHUNK = 4


@dataclasses.dataclass
class Simulation:
    """Everything a run needs, built once; arrays already on the device."""

    scenario: Any
    spec: RoundSpec
    topology: Any
    chunk: Any  # jitted (state, data, topo_data, weights, start, length) -> ...
    evaluate: Any  # jitted (params, EvalData) -> Evaluated
    state: Any  # stacked algorithm state, leaves (n, ...)
    data: PeerData
    eval_data: EvalData
    weights: jax.Array  # (n,) server aggregation weights (the algorithm's weighting)
    num_params: int
    strategy: tuple[str, int | None]
    chosen_by: str  # what chose ``strategy``: scenario, default or cost model
    estimate: StateEstimate  # memory the stacked state needs
    runtime: Any  # strategy -> (RoundSpec, chunk, evaluate) for that strategy
    attacker: Attacker | None = None  # the privacy stage (a privacy: section)
    mesh: Any = None  # the peer-axis mesh (execution.devices > 1), else None

    @property
    def devices(self) -> int:
        """Devices the peers are split over (1: no sharding)."""
        return 1 if self.mesh is None else self.mesh.size

    def place(self, state):
        """``state`` (e.g. restored from a checkpoint) where the run keeps it."""
        if self.mesh is None:
            return state
        return shard_peers(state, self.mesh, self.scenario.peers)

    def with_strategy(self, strategy: tuple[str, int | None]) -> Simulation:
        """The same simulation, its peers lifted by another execution strategy."""
        spec, chunk, evaluate = self.runtime(strategy)
        return dataclasses.replace(
            self, spec=spec, chunk=chunk, evaluate=evaluate, strategy=strategy
        )


def eval_lift(strategy: tuple[str, int | None], mesh=None):
    """Evaluation over chunks of at most EVAL_PEERS_PER_CHUNK peers (or fewer),
    within each device's block of peers when they are split over a mesh."""
    _, k = strategy
    chunk = min(k or EVAL_PEERS_PER_CHUNK, EVAL_PEERS_PER_CHUNK)
    lifter = lambda fn: lift(fn, "map", chunk)  # noqa: E731
    return lifter if mesh is None else per_device(lifter, mesh)


def resolve_strategy(execution, num_peers: int, step_cost) -> tuple[tuple, str]:
    """The strategy a run starts with, and what chose it: ``scenario``,
    ``default`` or ``cost model`` (``step_cost()``: one peer's gradient)."""
    if execution.strategy != "auto":
        return (execution.strategy, execution.peers_per_chunk), "scenario"
    backend = jax.default_backend()
    cost = step_cost() if backend == "cpu" and num_peers > 1 else None
    strategy = default_strategy(backend, num_peers, cost)
    return strategy, "default" if strategy == ("vmap", None) else "cost model"


def build(scenario, data_dir: str | None = None) -> Simulation:
    """Loads data, model, topology and algorithm; initialises the stacked state."""
    sc, n = scenario, scenario.peers
    devices = resolve_devices(sc.execution.devices, n)
    mesh = peer_mesh(devices) if devices > 1 else None
    fed = load_federated(sc.data, n, sc.seed, data_dir)
    model = build_model(dict(sc.model), fed.num_classes, fed.input_shape)
    apply_fn = lambda params, x: model.apply({"params": params}, x)
    name, alg_kwargs, opt_cfg = algorithm_parts(sc)
    l2 = opt_cfg.pop("l2", 0.0)

    optimizer = LocalOptimizer(opt_cfg, sc.rounds)
    topology = build_topology(dict(sc.topology), n, sc.seed, kernel=sc.execution.kernel)
    algorithm = ALGORITHMS.build(
        {"name": name, **alg_kwargs},
        "algorithm",
        loss_fn=make_loss(apply_fn, l2),
        optimizer=optimizer,
        graph={"n": n, **topology.info},
        seed=sc.seed,
        apply_fn=apply_fn,
        validation=fed.val,
        training=fed.train,
        rounds=sc.rounds,
    )
    check_graph(algorithm.rounds, topology, name, sc.topology["name"])

    capture = None
    if sc.privacy is not None:
        check_privacy(sc.privacy, n, sc.rounds)
        victims = sc.privacy.victim_peers(n)
        dynamic = bool(topology.info.get("dynamic"))
        check_marginalized(sc.privacy, algorithm, name, dynamic)
        capture = Capture(
            victims,
            rounds=sc.privacy.attack_rounds(sc.rounds, sc.eval_every),
            second=sc.privacy.marginalized,
        )

    clock = None

    def runtime(strategy: tuple[str, int | None]):
        lifted = lambda fn: lift(fn, *strategy)
        if mesh is not None and strategy[0] != "vmap":  # chunks within each device
            lifted = per_device(lifted, mesh)
        spec = RoundSpec(
            algorithm, topology.at, lifted, n, sc.data.batch_size, capture, clock
        )
        metrics = sc.evaluation.metrics
        ev_lift = eval_lift(strategy, mesh)
        evaluate = make_evaluate(apply_fn, ev_lift, EVAL_BATCH, metrics)
        if mesh is None:
            return spec, make_chunk(spec, sc.seed), evaluate
        return spec, jit_chunk(chunk_body(spec, sc.seed), mesh), evaluate

    params = init_params(model, fed.input_shape, root_key(sc.seed))
    step_cost = functools.partial(
        peer_step_cost,
        make_loss(apply_fn, l2),
        params,
        fed.input_shape,
        sc.data.batch_size,
    )
    strategy, chosen_by = resolve_strategy(sc.execution, n, step_cost)
    spec, chunk, evaluate = runtime(strategy)
    clocked = sc.clock is not None or needs_clock(algorithm)
    if clocked:
        check_clocked(sc, devices, name)
    keys = jax.random.split(root_key(sc.seed + 1), n)
    init = jax.jit(functools.partial(init_state, spec, sc.seed))
    stacked = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct((n,) + p.shape, p.dtype), params
    )
    shapes = jax.eval_shape(init, stacked, keys, topology.data)
    estimate = StateEstimate(n, tree_bytes(params), tree_bytes(shapes) // n)
    with out_of_memory_guard(estimate):
        stack = lambda p: jnp.broadcast_to(p, (n,) + p.shape)  # noqa: E731
        state = init(jax.tree.map(stack, params), keys, topology.data)
        data = _device(PeerData(*fed.train), mesh)
        eval_data = _eval_data(fed, sc.evaluation.test_samples, sc.seed, mesh)
        if clocked:
            clock = clock_for(sc, spec, algorithm, name, state, data, topology, params)
            clock = clock._replace(sample_loss=per_sample_loss(make_loss(apply_fn, l2)))
            spec, chunk, evaluate = runtime(strategy)
            state = init_clocked(spec, sc.seed, state, data, topology.data)
    sizes = fed.train.size.astype(np.float32)
    by_size = algorithm.rounds.weighting == "data_size"
    weights = sizes if by_size else np.ones_like(sizes)
    attacker = None
    if capture is not None:
        steps = alg_kwargs.get("local_steps", 1)
        check_messages(spec, sc.seed, state, data, topology, weights, params)
        attacker = Attacker(
            config=sc.privacy,
            capture=capture,
            apply_fn=apply_fn,
            init_fn=lambda key: init_params(model, fed.input_shape, key),
            params_like=params,
            eval_data=eval_data,
            table=round0_table(topology, n, sc.seed),
            num_peers=n,
            num_classes=fed.num_classes,
            seed=sc.seed,
            train={
                "optimizer": optimizer(steps),
                "batch_size": sc.data.batch_size,
                "local_steps": steps,
                "rounds": sc.rounds,
            },
            runs=RunSetup(
                chunk=functools.partial(chunk_body, spec),
                init=lambda key: init(
                    jax.tree.map(stack, init_params(model, fed.input_shape, key)),
                    keys,
                    topology.data,
                ),
                data=fed.train,
                topo_data=topology.data,
                weights=jnp.asarray(weights),
                eval_every=sc.eval_every,
                rounds=sc.rounds,
            ),
        )
    weights = jnp.asarray(weights)
    if mesh is not None:
        state = shard_peers(state, mesh, n)
        topology = dataclasses.replace(topology, data=replicate(topology.data, mesh))
        weights = replicate(weights, mesh)
    return Simulation(
        scenario=sc,
        spec=spec,
        topology=topology,
        chunk=chunk,
        evaluate=evaluate,
        state=state,
        data=data,
        eval_data=eval_data,
        weights=weights,
        num_params=num_params(params),
        strategy=strategy,
        chosen_by=chosen_by,
        estimate=estimate,
        runtime=runtime,
        attacker=attacker,
        mesh=mesh,
    )


def check_clocked(sc, devices: int, name: str) -> None:
    """One line for what the virtual clock does not run with."""
    why = "of an asynchronous algorithm" if sc.clock is None else "on the virtual clock"
    if sc.privacy is not None:
        raise ScenarioError(
            "privacy", f"the privacy stage does not capture runs {why} (yet)"
        )
    if devices > 1:
        raise ScenarioError(
            "execution.devices", f"a run {why} keeps its clock on one device"
        )


def _bits(tree) -> float:
    """Bits of one peer's part of a stacked pytree of shapes (leaves (n, ...))."""
    return float(
        sum(
            math.prod(x.shape[1:]) * np.dtype(x.dtype).itemsize * 8
            for x in jax.tree.leaves(tree)
        )
    )


def clock_for(sc, spec, algorithm, name, state, data, topology, params):
    """The run's ClockSpec, sized from the algorithm's messages (traced only)."""
    t0 = jnp.int32(0)
    view = None
    if algorithm.uses_topology:
        arrays = topology.at(topology.data, t0, round_key(sc.seed, t0, TOPOLOGY))
        view = peer_topology(arrays, sc.peers)[1]
    local = make_phases(spec, sc.seed).local
    peers = jnp.arange(sc.peers, dtype=jnp.int32)
    outbox = jax.eval_shape(lambda: local(state, *data, peers, t0, view)[1])
    return build_clock(
        sc.clock,
        algorithm,
        name,
        sc.peers,
        sc.seed,
        _bits(plain(outbox)),
        _bits(
            jax.tree.map(
                lambda p: jax.ShapeDtypeStruct((1,) + p.shape, p.dtype), params
            )
        ),
        topology.info,
    )


def check_messages(spec, seed, state, data, topology, weights, params) -> None:
    """A one-line error if the algorithm's messages are not models (the privacy
    attacks evaluate what was sent); traced only, nothing runs."""
    one_round = make_round(spec, seed)
    outbox = jax.eval_shape(
        lambda: one_round(state, jnp.int32(0), data, topology.data, weights)[2][1]
    )
    model_part(outbox, params)


def round0_table(topology, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Round 0's in-neighbour table (idx, W), (n, k) each, on the host."""
    t = jnp.int32(0)
    arrays = topology.at(topology.data, t, round_key(seed, t, TOPOLOGY))
    _, view = peer_topology(arrays, n)
    return np.asarray(view.idx), np.asarray(view.weight)


def attacker_for(sc, spec, state, data, topology, weights, params) -> Attacker:
    """The privacy stage's view of the run; a one-line error if the messages
    are not models (the attacks evaluate what was sent)."""
    one_round = make_round(spec, sc.seed)
    outbox = jax.eval_shape(
        lambda: one_round(state, jnp.int32(0), data, topology.data, weights)[2][1]
    )
    model_part(outbox, params)
    arrays = topology.at(topology.data, jnp.int32(0), root_key(sc.seed))
    _, view = peer_topology(arrays, sc.peers)
    return Attacker(
        config=sc.privacy,
        capture=spec.capture,
        apply_fn=None,
        init_fn=None,
        params_like=params,
        eval_data=None,
        table=(np.asarray(view.idx), np.asarray(view.weight)),
        num_peers=sc.peers,
        num_classes=0,
        seed=sc.seed,
        train={},
    )


def check_graph(rounds, topology, algorithm: str, graph: str) -> None:
    """A one-line ScenarioError if the graph is not one the algorithm can run on."""
    if (rounds.static_graph or rounds.undirected) and topology.info.get("dynamic"):
        raise ScenarioError(
            "topology.name",
            f"algorithm '{algorithm}' needs a static graph (it keeps state per "
            f"neighbour or running sums of W x); '{graph}' changes every round",
        )
    if rounds.undirected and not _undirected(topology.W):
        raise ScenarioError(
            "topology.name",
            f"algorithm '{algorithm}' keeps a dual per edge and needs every edge "
            f"both ways; '{graph}' is directed (use an undirected graph)",
        )


def _undirected(W) -> bool:
    if W is None:
        return False
    pattern = sp.csr_array(W) != 0
    return (pattern != pattern.T).nnz == 0


def _device(tree, mesh=None):
    """``tree`` on the device, or split along the peer axis of ``mesh``."""
    if mesh is not None:
        return shard_peers(tree, mesh)
    return jax.tree.map(jnp.asarray, tree)


def _pad_to(a: np.ndarray, axis: int, multiple: int) -> np.ndarray:
    size = a.shape[axis]
    target = max(multiple, math.ceil(size / multiple) * multiple)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, target - size)
    return np.pad(a, widths)


def _test_subset(m: int, samples: int | None, seed: int) -> np.ndarray:
    """Indices of the test samples evaluated: all, or a seeded subset (sorted)."""
    if samples is None or samples >= m:
        return np.arange(m)
    return np.sort(np.random.default_rng(seed).choice(m, samples, replace=False))


def _eval_data(
    fed, test_samples: int | None = None, seed: int = 0, mesh=None
) -> EvalData:
    cap = min(fed.train.x.shape[1], EVAL_TRAIN_PER_PEER)
    train = PeerData(
        _pad_to(fed.train.x[:, :cap], 1, EVAL_BATCH),
        _pad_to(fed.train.y[:, :cap], 1, EVAL_BATCH),
        np.minimum(fed.train.size, cap),
    )
    val = PeerData(
        _pad_to(fed.val.x, 1, EVAL_BATCH),
        _pad_to(fed.val.y, 1, EVAL_BATCH),
        fed.val.size,
    )
    keep = _test_subset(fed.test_y.shape[0], test_samples, seed)
    test = (
        _pad_to(fed.test_x[keep], 0, EVAL_BATCH),
        _pad_to(fed.test_y[keep], 0, EVAL_BATCH),
        _pad_to(np.ones(len(keep), np.float32), 0, EVAL_BATCH),
    )
    if mesh is not None:  # the peers' own sets split, the test set on every device
        split = _device(train, mesh), _device(val, mesh)
        return EvalData(*split, *replicate(test, mesh))
    return _device(EvalData(train, val, *test))
