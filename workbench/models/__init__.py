"""Flax model registry: logistic, mlp, cnn, lenet, resnet, alexnet, user modules.

``MODELS`` maps a name to ``fn(num_classes, input_shape, **options) ->
nn.Module``; :func:`build_model` builds one from a scenario's ``model``
section (a registry name or a ``module: "pkg.mod:Class"`` import path).
Parameters are the ``params`` collection of :func:`init_params`; logits are
``model.apply({"params": params}, x)`` for ``x`` of shape
``(*batch, *input_shape)``.
"""

from workbench.models import conv, dense, resnet  # noqa: F401 -- registers entries
from workbench.models.base import MODELS
from workbench.models.build import (
    build_model,
    init_params,
    load_module_class,
    num_params,
)

__all__ = ["MODELS", "build_model", "init_params", "load_module_class", "num_params"]
