"""ResNets with GroupNorm (no BatchNorm: running statistics break averaging).

All variants use the CIFAR-style stem (one 3x3 convolution, stride 1, no
max-pool) and end with global average pooling and a dense layer. ``depth``
picks the layout:

- 18, 34: four stages of basic blocks, (2, 2, 2, 2) / (3, 4, 6, 3); widths
  ``width * (1, 2, 4, 8)``, default ``width`` 64 (ResNet-18/34).
- 50, 101, 152: four stages of bottleneck blocks (expansion 4), stride on the
  3x3 convolution (ResNet-50-GN of the ETRI study: ``group_size: 32``).
- any other ``6k + 2`` (8, 14, 20, 32, 44, 56, 110): He et al.'s CIFAR ResNets,
  three stages of ``k`` basic blocks, widths ``width * (1, 2, 4)``, default
  ``width`` 16. ``depth: 8`` is the smallest, for tests.

Shortcuts are identities, or 1x1 strided projections + GroupNorm where the
shape changes (so ResNet-20 has 272,474 parameters, not option A's 269,722).
Every stage after the first halves the spatial size with ``SAME`` padding, so
any image size works (a 1x1 map stays 1x1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
from pydantic import PositiveInt

from workbench.errors import ScenarioError
from workbench.models.base import (
    MODELS,
    check_groups,
    flatten_images,
    group_norm,
    image_shape,
    unflatten_batch,
)
from workbench.models.layers import Conv, ConvImpl

# depth -> (block, blocks per stage) of the ImageNet ResNets.
_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}


def _conv(features: int, size: int, strides: int, impl: ConvImpl) -> Conv:
    return Conv(features, (size, size), strides, "SAME", use_bias=False, impl=impl)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and an identity/projection shortcut."""

    features: int
    strides: int = 1
    groups: int = 2
    group_size: int | None = None
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = lambda: group_norm(self.groups, self.group_size)
        conv = lambda f, size, strides=1: _conv(f, size, strides, self.conv_impl)
        y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
        y = norm()(conv(self.features, 3)(y))
        return nn.relu(y + _shortcut(x, self.features, self.strides, norm, conv))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), with GroupNorm."""

    features: int
    strides: int = 1
    groups: int = 2
    group_size: int | None = None
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = lambda: group_norm(self.groups, self.group_size)
        conv = lambda f, size, strides=1: _conv(f, size, strides, self.conv_impl)
        out = self.features * _EXPANSION["bottleneck"]
        y = nn.relu(norm()(conv(self.features, 1)(x)))
        y = nn.relu(norm()(conv(self.features, 3, self.strides)(y)))
        y = norm()(conv(out, 1)(y))
        return nn.relu(y + _shortcut(x, out, self.strides, norm, conv))


def _shortcut(x: jax.Array, features: int, strides: int, norm, conv) -> jax.Array:
    """Identity, or a strided 1x1 projection + GroupNorm when shapes change."""
    if strides == 1 and x.shape[-1] == features:
        return x
    return norm()(conv(features, 1, strides)(x))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A GroupNorm ResNet; stage ``i`` has ``width * 2**i`` (x4 bottleneck) maps.

    Attributes:
      num_classes: number of output logits.
      input_shape: ``(H, W, C)`` or ``(H, W)`` of one example.
      stage_sizes: blocks per stage; stages after the first downsample by 2.
      block: ``"basic"`` or ``"bottleneck"``.
      width: channels of the stem and of the first stage.
      groups: GroupNorm groups (ignored when ``group_size`` is set).
      group_size: channels per GroupNorm group.
      conv_impl: ``"matmul"``, ``"xla"`` or ``"auto"``; see
        :mod:`workbench.models.layers`.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    stage_sizes: tuple[int, ...]
    block: str = "basic"
    width: int = 64
    groups: int = 2
    group_size: int | None = None
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, batch = flatten_images(x, self.input_shape)
        stem = _conv(self.width, 3, 1, self.conv_impl)
        x = nn.relu(group_norm(self.groups, self.group_size)(stem(x)))
        block, options = _BLOCKS[self.block], (self.groups, self.group_size)
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = block(self.width * 2**i, strides, *options, self.conv_impl)(x)
        x = x.mean(axis=(1, 2))
        return unflatten_batch(nn.Dense(self.num_classes)(x), batch)


def resnet_layout(depth: int) -> tuple[str, tuple[int, ...]]:
    """``(block, stage_sizes)`` for a depth; see the module docstring.

    Raises:
      ScenarioError: at ``model.depth`` for an unsupported depth.
    """
    if depth in _LAYOUTS:
        return _LAYOUTS[depth]
    if depth >= 8 and (depth - 2) % 6 == 0:
        return "basic", ((depth - 2) // 6,) * 3
    raise ScenarioError(
        "model.depth",
        f"expected 18, 34, 50, 101 or 152 (ImageNet layouts) or 6k+2 >= 8 "
        f"(CIFAR layouts: 8, 14, 20, 32, 44, 56, 110, ...), got {depth}",
    )


@MODELS.register("resnet")
def resnet(
    num_classes: int,
    input_shape: tuple,
    depth: PositiveInt = 18,
    width: PositiveInt | None = None,
    groups: PositiveInt = 2,
    group_size: PositiveInt | None = None,
    conv_impl: ConvImpl = "auto",
) -> nn.Module:
    """A GroupNorm ResNet with a CIFAR-style 3x3 stem.

    Args:
      depth: 18/34 (basic), 50/101/152 (bottleneck) or 6k+2 (CIFAR, 3 stages).
      width: stem/first-stage channels; default 64 for the four-stage
        layouts, 16 for the 6k+2 ones.
      groups: GroupNorm groups per layer.
      group_size: channels per GroupNorm group instead of ``groups`` (the
        ETRI study's ``group_channels``).
      conv_impl: convolution implementation (``"auto"``: matmul on CPU).
    """
    image_shape("resnet", input_shape)
    block, stages = resnet_layout(depth)
    width = width or (64 if len(stages) == 4 else 16)
    widths = [width * 2**i for i in range(len(stages))]
    channels = [width, *widths, *(_EXPANSION[block] * w for w in widths)]
    check_groups(channels, groups, group_size)
    return ResNet(
        num_classes,
        tuple(input_shape),
        stages,
        block,
        width,
        groups,
        group_size,
        conv_impl,
    )
