"""Model registry: contract over every entry, closed-form sizes, import paths."""

from __future__ import annotations

import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.errors import ScenarioError
from workbench.models import MODELS, build_model, init_params, num_params
from workbench.models.resnet import resnet_layout

# Input shapes each entry must handle (digits 8x8x1, tabular, 2-D grey images).
SHAPES = {
    "logistic": [(5,)],
    "mlp": [(8, 8)],
    "cnn": [(8, 8, 1)],
    "lenet": [(8, 8, 1)],
    "resnet": [(8, 8, 3)],
    "alexnet": [(8, 8, 1)],
}
# Options that keep the contract test fast (smallest depth, narrow layers).
SMALL = {
    "mlp": {"hidden": [7, 5]},
    "cnn": {"hidden": 16},
    "resnet": {"depth": 8, "width": 4},
    "alexnet": {"hidden": 16},
}
# jax 0.10's CPU lowering of threefry compiles ~10x slower than philox (rolled
# loops); init_params takes any key, so the tests draw philox keys.
KEY = jax.random.key(0, impl="philox2x32")
RNG = np.random.default_rng(0)
CASES = [(name, shape) for name in MODELS for shape in SHAPES.get(name, [(8, 8, 1)])]


@pytest.fixture(autouse=True)
def _strict():
    # No implicit rank promotion; full f32 matmuls so GPUs (TF32) compare too.
    with jax.numpy_rank_promotion("raise"), jax.default_matmul_precision("highest"):
        yield


def _count(shapes) -> int:
    return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))


def _abstract_count(model, input_shape) -> int:
    """Parameter count from shapes only (no compilation)."""
    x = jnp.zeros((1, *input_shape))
    return _count(jax.eval_shape(model.init, jax.random.key(0), x)["params"])


def test_registry_lists_every_model():
    assert set(MODELS) == set(SHAPES)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_contract(name, shape):
    classes, batch, peers = 3, 4, 3
    model = build_model({"name": name, **SMALL.get(name, {})}, classes, shape)
    keys = jax.random.split(KEY, peers)
    # One init per peer, vmapped as the engine does: leaves (peers, ...).
    stacked = jax.vmap(lambda k: init_params(model, shape, k))(keys)
    x = jnp.asarray(RNG.normal(size=(batch, *shape)), jnp.float32)

    def apply(p, x):
        return model.apply({"params": p}, x)

    @jax.jit
    def views(p, x):  # batched, one example, two batch axes
        return apply(p, x), apply(p, x[0]), apply(p, x.reshape(2, 2, *shape))

    outs = [views(jax.tree.map(lambda a, i=i: a[i], stacked), x) for i in range(peers)]
    ys = np.stack([y for y, _, _ in outs])
    assert ys.shape == (peers, batch, classes)
    assert np.isfinite(ys).all()
    assert not np.allclose(ys[0], ys[1])  # distinct inits give distinct models
    vmapped = jax.jit(jax.vmap(apply, in_axes=(0, None)))(stacked, x)
    np.testing.assert_allclose(vmapped, ys, rtol=1e-5, atol=1e-5)
    # Any number of leading batch axes, none included (per-example gradients).
    _, one, grid = outs[0]
    np.testing.assert_allclose(one, ys[0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grid.reshape(ys[0].shape), ys[0], rtol=1e-5, atol=1e-5)


def test_femnist_cnn_exact_parameter_count():
    model = build_model({"name": "cnn"}, 62, (28, 28, 1))
    params = init_params(model, (28, 28, 1), KEY)
    expected = (
        (5 * 5 * 1 * 32 + 32)
        + (5 * 5 * 32 * 64 + 64)
        + (7 * 7 * 64 * 512 + 512)
        + (512 * 62 + 62)
    )
    assert num_params(params) == expected == 1_690_046
    kernels = sorted(p["kernel"].shape for p in params.values())
    assert kernels == [(5, 5, 1, 32), (5, 5, 32, 64), (512, 62), (3136, 512)]


def test_logistic_is_an_affine_map():
    model = build_model({"name": "logistic"}, 10, (8, 8, 1))
    params = init_params(model, (8, 8, 1), KEY)
    assert num_params(params) == 8 * 8 * 1 * 10 + 10
    x = RNG.normal(size=(3, 8, 8, 1)).astype(np.float32)
    (dense,) = params.values()
    expected = x.reshape(3, 64) @ dense["kernel"] + dense["bias"][None]
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-5)


def test_mlp_widths_from_yaml_list():
    model = build_model({"name": "mlp", "hidden": [16, 8]}, 10, (8, 8, 1))
    assert model.hidden == (16, 8)
    assert _abstract_count(model, (8, 8, 1)) == (64 * 16 + 16) + (16 * 8 + 8) + (
        8 * 10 + 10
    )


def test_lenet_valid_is_classic_lenet5():
    model = build_model({"name": "lenet", "padding": "VALID"}, 10, (32, 32, 3))
    convs = (5 * 5 * 3 * 6 + 6) + (5 * 5 * 6 * 16 + 16)
    norms = 2 * 6 + 2 * 16
    dense = (5 * 5 * 16 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert _abstract_count(model, (32, 32, 3)) == convs + norms + dense


def test_resnet_layouts():
    assert resnet_layout(8) == ("basic", (1, 1, 1))
    assert resnet_layout(20) == ("basic", (3, 3, 3))
    assert resnet_layout(18) == ("basic", (2, 2, 2, 2))
    assert resnet_layout(34) == ("basic", (3, 4, 6, 3))
    assert resnet_layout(50) == ("bottleneck", (3, 4, 6, 3))


def test_resnet8_parameter_count():
    model = build_model({"name": "resnet", "depth": 8, "width": 4}, 10, (8, 8, 3))

    def conv(k, c_in, c_out):  # conv without bias + GroupNorm scale and bias
        return k * k * c_in * c_out + 2 * c_out

    stem = conv(3, 3, 4)
    stage1 = conv(3, 4, 4) + conv(3, 4, 4)
    stage2 = conv(3, 4, 8) + conv(3, 8, 8) + conv(1, 4, 8)
    stage3 = conv(3, 8, 16) + conv(3, 16, 16) + conv(1, 8, 16)
    head = 16 * 10 + 10
    expected = stem + stage1 + stage2 + stage3 + head
    assert _abstract_count(model, (8, 8, 3)) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [  # GroupNorm has as many parameters as BatchNorm: the usual CIFAR sizes.
        ({"name": "resnet"}, 11_173_962),
        ({"name": "resnet", "depth": 50, "group_size": 32}, 23_520_842),
        ({"name": "resnet", "depth": 20}, 272_474),
    ],
)
def test_resnet_matches_the_cifar_reference_sizes(spec, expected):
    model = build_model(spec, 10, (32, 32, 3))
    assert _abstract_count(model, (32, 32, 3)) == expected


def test_alexnet_parameter_count():
    model = build_model({"name": "alexnet"}, 10, (32, 32, 3))
    convs = [(3, 64), (64, 192), (192, 384), (384, 256), (256, 256)]
    expected = sum(3 * 3 * a * b + b for a, b in convs)
    expected += (2 * 2 * 256 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    assert _abstract_count(model, (32, 32, 3)) == expected


def _error(spec, shape=(8, 8, 1)) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        build_model(spec, 10, shape)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("spec", "shape", "path", "words"),
    [
        ({"name": "mlpp"}, (8, 8, 1), "model.name", "did you mean 'mlp'"),
        ({}, (8, 8, 1), "model.name", "module"),
        ({"name": "mlp", "hiden": [3]}, (8, 8, 1), "model.hiden", "hidden"),
        ({"name": "mlp", "hidden": ["x"]}, (8, 8, 1), "model.hidden", "'x'"),
        ({"name": "cnn"}, (5,), "model.name", "image"),
        ({"name": "lenet", "groups": 4}, (8, 8, 1), "model.groups", "[6]"),
        ({"name": "lenet", "padding": "VALID"}, (8, 8, 1), "model.padding", "16"),
        ({"name": "resnet", "depth": 9}, (8, 8, 1), "model.depth", "6k+2"),
        ({"name": "resnet", "groups": 0}, (8, 8, 1), "model.groups", "0"),
    ],
)
def test_registry_errors_are_one_line(spec, shape, path, words):
    err = _error(spec, shape)
    assert err.path == path
    assert words in err.message


USER_MODULE = """
import flax.linen as nn

class Tiny(nn.Module):
    num_classes: int
    widths: tuple[int, ...] = (4,)

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for w in self.widths:
            x = nn.tanh(nn.Dense(w)(x))
        return nn.Dense(self.num_classes)(x)

class WithBatchNorm(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=True)(x.reshape((x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)

def helper():
    return 1
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "wb_user_net.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "wb_broken_net.py").write_text("raise RuntimeError('boom\\nline 2')")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "wb_user_net"
    for name in ("wb_user_net", "wb_broken_net"):
        sys.modules.pop(name, None)


def test_import_path_model(user_module):
    spec = {"module": f"{user_module}:Tiny", "widths": [3, 2]}
    model = build_model(spec, 10, (8, 8, 1))
    assert model.num_classes == 10 and model.widths == (3, 2)
    params = init_params(model, (8, 8, 1), KEY)
    assert num_params(params) == (64 * 3 + 3) + (3 * 2 + 2) + (2 * 10 + 10)
    x = jnp.ones((5, 8, 8, 1))
    assert model.apply({"params": params}, x).shape == (5, 10)


def test_stateful_user_model_is_refused(user_module):
    model = build_model({"module": f"{user_module}:WithBatchNorm"}, 10, (8, 8, 1))
    with pytest.raises(ScenarioError, match="batch_stats"):
        init_params(model, (8, 8, 1), KEY)


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"module": "wb_user_net.Tiny"}, "model.module", "package.module:Class"),
        ({"module": "wb_no_such_pkg:Net"}, "model.module", "cannot import"),
        ({"module": "wb_broken_net:Net"}, "model.module", "boom line 2"),
        ({"module": "wb_user_net:Tiy"}, "model.module", "did you mean 'Tiny'"),
        ({"module": "wb_user_net:helper"}, "model.module", "flax.linen.Module"),
        ({"module": "json:JSONDecoder"}, "model.module", "flax.linen.Module"),
        ({"module": "wb_user_net:Tiny", "depth": 3}, "model.depth", "widths"),
        ({"module": "wb_user_net:Tiny", "widths": "x"}, "model.widths", "'x'"),
        ({"module": "wb_user_net:Tiny", "num_classes": 5}, "model.num_classes", "10"),
        ({"module": "wb_user_net:Tiny", "name": "mlp"}, "model", "not both"),
    ],
)
def test_import_path_errors_are_one_line(user_module, spec, path, words):
    err = _error(spec)
    assert err.path == path
    assert words in err.message
