"""Base-(k+1) graphs (Takezawa et al., NeurIPS 2023, arXiv 2305.11420).

A periodic sequence of symmetric, doubly stochastic mixing matrices of maximum
degree k whose product over one period is exactly J, for ANY n (the one-peer
exponential graph needs n a power of two). Built from three pieces:

- k-peer hyper-hypercube (n whose prime factors are <= k+1): write n = f_1 ...
  f_L with f_l in 2..k+1; round l averages each clique of nodes that differ
  only in mixed-radix digit l. The averages commute; their product is J.
- simple Base-(k+1) (any n): n = sum_l a_l (k+1)^{p_l} in base k+1. Groups V_l
  of a_l (k+1)^{p_l} nodes average internally (hyper-hypercube); then for
  j = 0..L-2 every node u of V_{>j} meets one node of each of the a_j blocks of
  (k+1)^{p_j} nodes of V_j with weight f/a_j, f = |V_j| / |V_{>=j}| (so u moves
  to the running weighted mean), and the blocks of V_j re-average afterwards,
  which brings every block to the global mean.
- Base-(k+1): n = s r with s the (k+1)-smooth part of n: simple Base-(k+1) on
  s blocks of r nodes, then hyper-hypercube on the r strided groups of s
  nodes; whichever of this and the simple graph is shorter.

Unlike the reference code, finished groups idle (identity) instead of
repeating rounds, and no optional "inner edges" are added.
"""

from __future__ import annotations

import scipy.sparse as sp

from workbench.topology.base import TOPOLOGIES, Periodic, require

Round = list[tuple[int, int, float]]  # (i, j, W_ij) entries of one round


def _factors(m: int, k: int) -> list[int] | None:
    """m as a product of factors in 2..k+1 (largest first, then ascending)."""
    out = []
    for f in range(k + 1, 1, -1):
        while m % f == 0:
            out.append(f)
            m //= f
    return sorted(out) if m == 1 else None


def _clique(nodes: list[int]) -> Round:
    w = 1.0 / len(nodes)
    return [(i, j, w) for i in nodes for j in nodes]


def hyper_hypercube(nodes: list[int], k: int) -> list[Round]:
    """Rounds of the k-peer hyper-hypercube on ``nodes`` (len (k+1)-smooth)."""
    factors = _factors(len(nodes), k)
    rounds, stride = [], 1
    for f in factors:
        starts = [i for i in range(len(nodes)) if (i // stride) % f == 0]
        groups = [[nodes[i + c * stride] for c in range(f)] for i in starts]
        rounds.append([e for g in groups for e in _clique(g)])
        stride *= f
    return rounds


def _merge(*sequences: list[Round]) -> list[Round]:
    """Runs sequences on disjoint nodes side by side (shorter ones idle)."""
    length = max((len(s) for s in sequences), default=0)
    return [[e for s in sequences if t < len(s) for e in s[t]] for t in range(length)]


def _digits(m: int, base: int) -> list[tuple[int, int]]:
    """[(a_l, p_l)] with m = sum a_l base^p_l, p_l decreasing, a_l in 1..base-1."""
    p = 0
    while base ** (p + 1) <= m:
        p += 1
    out = []
    for q in range(p, -1, -1):
        a, m = divmod(m, base**q)
        if a:
            out.append((a, q))
    return out


def simple_base(nodes: list[int], k: int) -> list[Round]:
    """Simple Base-(k+1) graph on ``nodes``; product over the rounds is J."""
    if len(nodes) <= 1:
        return []
    if _factors(len(nodes), k) is not None:
        return hyper_hypercube(nodes, k)
    parts, groups, start = _digits(len(nodes), k + 1), [], 0
    for a, p in parts:
        groups.append(nodes[start : start + a * (k + 1) ** p])
        start += a * (k + 1) ** p
    rounds = _merge(*(hyper_hypercube(g, k) for g in groups))
    blocks = [
        [g[b * (k + 1) ** p : (b + 1) * (k + 1) ** p] for b in range(a)]
        for g, (a, p) in zip(groups, parts, strict=True)
    ]
    regroup = [_merge(*(hyper_hypercube(b, k) for b in bs)) for bs in blocks]
    paired = len(groups) - 1  # V_0 .. V_{L-2} serve as partners, in turn
    for j in range(1 + parts[0][1]):  # pairing rounds, then re-averaging
        step = _pairing(groups, parts, blocks, j) if j < paired else []
        for g, again in enumerate(regroup[: min(j, paired)]):  # paired at round g
            if j - g - 1 < len(again):
                step += again[j - g - 1]
        rounds.append(step)
    return rounds


def _pairing(groups, parts, blocks, j: int) -> Round:
    """Round where every node of V_{>j} meets one node of each block of V_j."""
    later = [u for g in groups[j + 1 :] for u in g]
    a = parts[j][0]
    f = len(groups[j]) / (len(groups[j]) + len(later))
    out = []
    for slot, u in enumerate(later):
        out.append((u, u, 1.0 - f))
        for block in blocks[j]:
            v = block[slot]
            out += [(u, v, f / a), (v, u, f / a), (v, v, 1.0 - f / a)]
    return out


def _smooth_part(m: int, k: int) -> int:
    """The largest divisor of m whose prime factors are all <= k+1."""
    s = 1
    for f in range(2, k + 2):  # ascending: composite f never divides the rest
        while m % f == 0:
            m //= f
            s *= f
    return s


def base_graph(n: int, k: int) -> list[Round]:
    """Base-(k+1) graph rounds on nodes 0..n-1 (the shorter of two builds)."""
    nodes = list(range(n))
    simple = simple_base(nodes, k)
    s = _smooth_part(n, k)
    r = n // s
    if s == 1 or r == 1:
        return simple
    inner = _merge(*(simple_base(nodes[b * r : (b + 1) * r], k) for b in range(s)))
    outer = _merge(*(hyper_hypercube(nodes[j::r], k) for j in range(r)))
    return simple if len(simple) < len(inner) + len(outer) else inner + outer


def to_matrix(entries: Round, n: int) -> sp.csr_array:
    """One round as W; nodes without entries keep their value (W_ii = 1)."""
    busy = {i for i, _, _ in entries}
    entries = entries + [(i, i, 1.0) for i in range(n) if i not in busy]
    rows, cols, vals = zip(*entries, strict=True)
    return sp.csr_array((vals, (rows, cols)), shape=(n, n))


@TOPOLOGIES.register("base_k")
def base_k(n: int, seed: int, k: int = 1):
    """Base-(k+1) graph: max degree k, period product exactly J for any n."""
    del seed
    require(k >= 1, "k", f"needs k >= 1, got {k}")
    rounds = base_graph(n, k) or [[]]
    return Periodic(tuple(to_matrix(r, n) for r in rounds))
