"""Datasets that need no files: scikit-learn's digits and FedProx's Synthetic.

``synthetic`` follows Li et al., "Federated Optimization in Heterogeneous
Networks" (FedProx, MLSys 2020), ``data/synthetic_*/generate_*.py``: user ``k``
has ``lognormal(4, 2) + 50`` samples, ``x ~ N(v_k, diag(j^-1.2))`` with
``v_k ~ N(B_k, 1)``, ``B_k ~ N(0, beta)``, and a softmax model
``y = argmax(W_k x + b_k)`` with ``W_k, b_k ~ N(u_k, 1)``, ``u_k ~ N(0, alpha)``.
``alpha`` controls how much the local models differ, ``beta`` how much the local
inputs differ. The iid variant shares one ``W, b ~ N(0, 1)`` and sets
``v_k = B_k * 1`` (all users alike when ``beta = 0``).
"""

from __future__ import annotations

import numpy as np

from workbench.data.dataset import (
    DATASETS,
    Dataset,
    check_fraction,
    make_dataset,
    split_test,
)
from workbench.errors import ScenarioError


@DATASETS.register("digits")
def digits(
    data_dir: str, seed: int, test_fraction: float = 0.2, label_noise: float = 0.0
) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, embedded; no download).

    Pixels (0..16) are scaled to [0, 1]; inputs are (8, 8, 1). The test set is
    the last ``test_fraction`` of the rows after a shuffle seeded by ``seed``.
    ``label_noise`` replaces that fraction of all labels (training and test
    alike, before the split) by another class drawn uniformly (seeded):
    examples a model can only fit by memorising them, as in the membership
    inference sanity checks; members and non-members stay alike, so a model
    that memorised nothing leaves a loss threshold attack at AUC 0.5.
    """
    del data_dir
    import sklearn.datasets  # slow import (~2 s): only when digits are loaded

    if not 0.0 <= label_noise < 1.0:
        raise ScenarioError(
            "data.options.label_noise", f"must be in [0, 1), got {label_noise}"
        )
    bunch = sklearn.datasets.load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = flip_labels(bunch.target, label_noise, 10, seed)
    tx, ty, vx, vy = split_test(x, y, test_fraction, seed)
    return make_dataset("digits", (tx, ty), (vx, vy), 10)


def flip_labels(y: np.ndarray, fraction: float, classes: int, seed: int) -> np.ndarray:
    """``y`` with round(fraction * len(y)) labels (seeded) moved to another class."""
    rng = np.random.default_rng([seed, 0x1AB])
    chosen = rng.choice(len(y), round(fraction * len(y)), replace=False)
    out = y.copy()
    out[chosen] = (y[chosen] + rng.integers(1, classes, len(chosen))) % classes
    return out


def _check_synthetic(alpha: float, beta: float, num_users: int, dim: int) -> None:
    for key, value in (("alpha", alpha), ("beta", beta)):
        if value < 0:
            raise ScenarioError(f"data.options.{key}", f"must be >= 0, got {value}")
    for key, value in (("num_users", num_users), ("dim", dim)):
        if value < 1:
            raise ScenarioError(f"data.options.{key}", f"must be >= 1, got {value}")


def _user_data(
    rng: np.random.Generator,
    mean_x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    num: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` samples ``x ~ N(mean_x, diag(j^-1.2))``, ``y = argmax(xW + b)``."""
    dim = mean_x.shape[0]
    std = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of j^-1.2
    x = mean_x + std * rng.standard_normal((num, dim))
    return x, np.argmax(x @ W + b, axis=1)


@DATASETS.register("synthetic")
def synthetic(
    data_dir: str,
    seed: int,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_users: int = 30,
    dim: int = 60,
    num_classes: int = 10,
    iid: bool = False,
    test_fraction: float = 0.1,
) -> Dataset:
    """FedProx's Synthetic(alpha, beta); ``train_groups`` is the user id.

    Each user's samples are split: the first ``1 - test_fraction`` go to train
    (as in FedProx's 90/10 split), the rest to the pooled test set.
    """
    del data_dir
    _check_synthetic(alpha, beta, num_users, dim)
    check_fraction(test_fraction, "test_fraction")
    if num_classes < 2:
        raise ScenarioError(
            "data.options.num_classes", f"must be >= 2, got {num_classes}"
        )
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_users).astype(np.int64) + 50
    mean_w = rng.normal(0, alpha, num_users)
    big_b = rng.normal(0, beta, num_users)
    if iid:
        mean_x = np.ones((num_users, dim)) * big_b[:, None]
        W_glob = rng.normal(0, 1, (dim, num_classes))
        b_glob = rng.normal(0, 1, num_classes)
    else:
        mean_x = rng.normal(big_b[:, None], 1, (num_users, dim))
    parts = {"tx": [], "ty": [], "vx": [], "vy": [], "g": []}
    for k in range(num_users):
        if iid:
            W, b = W_glob, b_glob
        else:
            W = rng.normal(mean_w[k], 1, (dim, num_classes))
            b = rng.normal(mean_w[k], 1, num_classes)
        x, y = _user_data(rng, mean_x[k], W, b, int(sizes[k]))
        cut = int((1.0 - test_fraction) * len(y))
        parts["tx"].append(x[:cut])
        parts["ty"].append(y[:cut])
        parts["vx"].append(x[cut:])
        parts["vy"].append(y[cut:])
        parts["g"].append(np.full(cut, k))
    cat = {key: np.concatenate(v) for key, v in parts.items()}
    return make_dataset(
        "synthetic",
        (cat["tx"], cat["ty"]),
        (cat["vx"], cat["vy"]),
        num_classes,
        train_groups=cat["g"],
    )
