"""Model registry: contract over every entry, closed-form sizes, import paths."""

from __future__ import annotations

import inspect
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.errors import ScenarioError
from workbench.models import MODELS, build_model, init_params, num_params
from workbench.models.layers import Conv, max_pool_2x2, resolve_conv_impl
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
    if "conv_impl" in inspect.signature(MODELS[name]).parameters:
        # CPU default (auto) is patches + matmul; lax.conv: same tree, same logits.
        spec = {"name": name, **SMALL.get(name, {}), "conv_impl": "xla"}
        twin = build_model(spec, classes, shape)
        tree = jax.eval_shape(lambda: init_params(twin, shape, KEY))
        assert jax.tree.map(lambda a: a.shape, tree) == jax.tree.map(
            lambda a: a.shape[1:], stacked
        )
        lax_conv = lambda p, x: twin.apply({"params": p}, x)
        y_xla = jax.jit(jax.vmap(lax_conv, in_axes=(0, None)))(stacked, x)
        np.testing.assert_allclose(y_xla, ys, rtol=1e-5, atol=1e-5)


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


def _same_tree(a, b) -> bool:
    same = jax.tree.map(lambda u, v: u.shape == v.shape and bool((u == v).all()), a, b)
    return jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.all(same)


def _random_like(tree):
    """Random parameters shaped like ``tree`` (no init to compile).

    Kernels ~ N(0, 1 / fan_in) (LeCun), vectors (biases, norm scales) ~ N(0, 0.1).
    """

    def draw(leaf):
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 100
        return jnp.asarray(RNG.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(draw, tree)


def test_conv_init_is_flax_conv_init():
    # Same names, shapes and values for the same key, with and without bias.
    x = jnp.zeros((1, 6, 6, 3))
    layers = [
        (cls(4, (k, k), use_bias=bias), Conv(4, (k, k), use_bias=bias, impl=impl))
        for cls in (nn.Conv,)
        for k in (1, 5)
        for bias in (True, False)
        for impl in ("xla", "matmul")
    ]
    inits = jax.jit(lambda x: [(a.init(KEY, x), b.init(KEY, x)) for a, b in layers])
    for ref, ours in inits(x):
        assert _same_tree(ours, ref)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_matmul_conv_is_flax_conv(padding, strides, size):
    # 9x9 inputs: odd sizes give SAME pads that differ top/bottom at stride 2.
    x = jnp.asarray(RNG.normal(size=(2, 9, 9, 3)), jnp.float32)
    window = (size, size)
    ref = nn.Conv(4, window, strides, padding=padding)
    convs = [Conv(4, window, strides, padding, impl=i) for i in ("xla", "matmul")]
    params = _random_like(jax.eval_shape(ref.init, KEY, x))
    apply = jax.jit(lambda p, x: [m.apply(p, x) for m in (ref, *convs)])
    expected, *outs = apply(params, x)
    for y in outs:
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_matmul_conv_under_vmap_over_peers():
    # Three peers with their own weights and images, as the engine lifts them.
    x = jnp.asarray(RNG.normal(size=(3, 2, 7, 7, 5)), jnp.float32)
    convs = {impl: Conv(6, (3, 3), 2, impl=impl) for impl in ("xla", "matmul")}
    shapes = jax.eval_shape(convs["xla"].init, KEY, x[0])
    peers = [_random_like(shapes) for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *peers)

    def loss(conv, params, x):
        return jnp.sum(jnp.sin(conv.apply(params, x)))

    @jax.jit
    def run(stacked, x):
        out = {
            impl: jax.vmap(jax.value_and_grad(lambda p, x, c=c: loss(c, p, x)))(
                stacked, x
            )
            for impl, c in convs.items()
        }
        mm = convs["matmul"]
        one = jax.tree.map(lambda a: a[2], stacked)
        # Any leading batch axes: one example, two axes.
        views = mm.apply(one, x[2, 1]), mm.apply(one, x[2].reshape(2, 1, 7, 7, 5))
        return out, loss(mm, one, x[2]), mm.apply(one, x[2]), views

    out, single, y, (example, grid) = run(stacked, x)
    (lx, gx), (lm, gm) = out["xla"], out["matmul"]
    np.testing.assert_allclose(lm, lx, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), gm, gx)
    np.testing.assert_allclose(lm[2], single, rtol=1e-5)
    assert not np.allclose(lx[0], lx[1])  # peers do differ
    np.testing.assert_allclose(example, y[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid.reshape(y.shape), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_reshape_max_pool_is_flax_max_pool(padding):
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding=padding)
    ours = lambda x: max_pool_2x2(x, padding)

    @jax.jit
    def run(x):  # values and gradients (tie-free inputs); an extra batch axis
        grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
        return ours(x), ref(x), grad(ours), grad(ref), ours(x[None])[0]

    # Odd and even sides; the smallest map each padding accepts.
    smallest = (1, 1, 1, 2) if padding == "SAME" else (1, 3, 3, 2)
    for shape in [(2, 7, 6, 3), smallest]:
        x = jnp.asarray(RNG.normal(size=shape), jnp.float32)
        y, y_ref, g, g_ref, grid = run(x)
        assert y.shape == y_ref.shape
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(grid, y_ref)
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-7)


def test_auto_conv_impl_is_matmul_on_cpu():
    expected = "matmul" if jax.default_backend() == "cpu" else "xla"
    assert resolve_conv_impl("auto") == expected
    assert build_model({"name": "cnn"}, 10, (8, 8, 1)).conv_impl == "auto"


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
        ({"name": "cnn", "conv_impl": "fft"}, (8, 8, 1), "model.conv_impl", "fft"),
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
