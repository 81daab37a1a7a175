"""Shared test setup: huge pages as the command line has them, and early
detection of peer-axis broadcasting bugs.

pytest re-executes itself with glibc's huge-page tunable (workbench.allocator)
before any test starts JAX, so tests and benchmarks run as ``workbench
simulate`` does. The restart waits for ``pytest_configure`` so that pytest's
output capture can first hand the terminal back: a restart while conftest files
are imported would write the new run's report into the capture's temporary file.
"""

import jax

from workbench.allocator import reexec_with_huge_pages

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    reexec_with_huge_pages()
    if capture is not None:
        capture.start_global_capturing()
