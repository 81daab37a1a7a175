"""Shared test setup: catch peer-axis broadcasting bugs early."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
