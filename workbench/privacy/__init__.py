"""Privacy: defenses' accounting, membership and linkability attacks, metrics.

The defenses themselves are algorithms (``workbench.algorithms``: ``muffliato``,
``zerosum``, ``dpsgd``); this package measures what the messages they send leak.
"""
