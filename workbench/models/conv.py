"""Small convolutional networks: the FEMNIST CNN, LeNet-5 (GroupNorm), AlexNet.

Convolutions and pools use ``"SAME"`` padding, so they work on any image size
(8x8 digits included: a 2x2/stride-2 ``SAME`` pool of a 1x1 map is 1x1). On even
sizes a ``SAME`` 2x2/stride-2 pool is the usual ``VALID`` one. Convolutions and
pools are the vmap-friendly ones of :mod:`workbench.models.layers`; the
``conv_impl`` option picks patches + matmul (``"auto"``: on CPU) or ``lax.conv``.
"""

from __future__ import annotations

from typing import Literal

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
from workbench.models.layers import Conv, ConvImpl, max_pool_2x2


class FemnistCNN(nn.Module):
    """The FEMNIST CNN of LEAF / decentralizepy.

    5x5 conv 32 (SAME) -> ReLU -> 2x2 max-pool -> 5x5 conv 64 (SAME) -> ReLU ->
    2x2 max-pool -> dense ``hidden`` -> ReLU -> dense ``num_classes``.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    hidden: int = 512
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, batch = flatten_images(x, self.input_shape)
        for features in (32, 64):
            conv = Conv(features, (5, 5), padding="SAME", impl=self.conv_impl)
            x = max_pool_2x2(nn.relu(conv(x)))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
        return unflatten_batch(nn.Dense(self.num_classes)(x), batch)


class LeNet(nn.Module):
    """LeNet-5 with GroupNorm after each convolution.

    5x5 conv 6 -> GN -> ReLU -> pool -> 5x5 conv 16 -> GN -> ReLU -> pool ->
    dense 120 -> ReLU -> dense 84 -> ReLU -> dense ``num_classes``.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    groups: int = 2
    padding: str = "SAME"
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, batch = flatten_images(x, self.input_shape)
        for features in (6, 16):
            x = Conv(features, (5, 5), padding=self.padding, impl=self.conv_impl)(x)
            x = max_pool_2x2(nn.relu(group_norm(self.groups)(x)), self.padding)
        x = x.reshape((x.shape[0], -1))
        for width in (120, 84):
            x = nn.relu(nn.Dense(width)(x))
        return unflatten_batch(nn.Dense(self.num_classes)(x), batch)


class AlexNet(nn.Module):
    """AlexNet for 32x32 images (the CIFAR-10 variant used in FL benchmarks).

    The five-convolution stack of AlexNet (64, 192, 384, 256, 256 filters) with
    3x3 kernels, the first with stride 2, and three 2x2 max-pools (32x32 ->
    2x2x256), then dense ``hidden`` -> dense ``hidden`` -> ``num_classes`` with
    ReLUs. Dropout of the original classifier is left out (deterministic apply).
    """

    num_classes: int
    input_shape: tuple[int, ...]
    hidden: int = 4096
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda features, strides=1: Conv(
            features, (3, 3), strides, padding="SAME", impl=self.conv_impl
        )
        x, batch = flatten_images(x, self.input_shape)
        x = max_pool_2x2(nn.relu(conv(64, 2)(x)))
        x = max_pool_2x2(nn.relu(conv(192)(x)))
        for features in (384, 256, 256):
            x = nn.relu(conv(features)(x))
        x = max_pool_2x2(x).reshape((x.shape[0], -1))
        for _ in range(2):
            x = nn.relu(nn.Dense(self.hidden)(x))
        return unflatten_batch(nn.Dense(self.num_classes)(x), batch)


@MODELS.register("cnn")
def cnn(
    num_classes: int,
    input_shape: tuple,
    hidden: PositiveInt = 512,
    conv_impl: ConvImpl = "auto",
) -> nn.Module:
    """The FEMNIST CNN (decentralizepy's; LEAF's TensorFlow original: hidden 2048).

    Args:
      hidden: width of the dense layer; 28x28x1 inputs give 7*7*64 features.
      conv_impl: ``"matmul"`` (patches + matmul), ``"xla"`` (``lax.conv``) or
        ``"auto"`` (matmul on CPU); same parameters and outputs, see
        :mod:`workbench.models.layers`.
    """
    image_shape("cnn", input_shape)
    return FemnistCNN(num_classes, tuple(input_shape), hidden, conv_impl)


@MODELS.register("lenet")
def lenet(
    num_classes: int,
    input_shape: tuple,
    groups: PositiveInt = 2,
    padding: Literal["SAME", "VALID"] = "SAME",
    conv_impl: ConvImpl = "auto",
) -> nn.Module:
    """LeNet-5 with GroupNorm.

    Args:
      groups: GroupNorm groups; must divide 6 and 16 (so 1 or 2).
      padding: ``"VALID"`` is the classic LeNet-5 (32x32 -> 5x5x16 features);
        it needs images of at least 16x16. ``"SAME"`` works on any size.
      conv_impl: convolution implementation, as for ``cnn``.
    """
    shape = image_shape("lenet", input_shape)
    check_groups((6, 16), groups)
    if padding == "VALID" and min(_valid_lenet_size(s) for s in shape[:2]) < 1:
        raise ScenarioError(
            "model.padding",
            f"'VALID' LeNet needs images of at least 16x16, got {shape[:2]}; "
            "use padding: SAME",
        )
    return LeNet(num_classes, tuple(input_shape), groups, padding, conv_impl)


def _valid_lenet_size(size: int) -> int:
    """Side of the last feature map of a ``VALID`` LeNet on a ``size`` image."""
    return ((size - 4) // 2 - 4) // 2


@MODELS.register("alexnet")
def alexnet(
    num_classes: int,
    input_shape: tuple,
    hidden: PositiveInt = 4096,
    conv_impl: ConvImpl = "auto",
) -> nn.Module:
    """AlexNet sized for 32x32 images (CIFAR-10, as in the HiPS FedAvg demo).

    Args:
      hidden: width of the two dense hidden layers.
      conv_impl: convolution implementation, as for ``cnn``.
    """
    image_shape("alexnet", input_shape)
    return AlexNet(num_classes, tuple(input_shape), hidden, conv_impl)
