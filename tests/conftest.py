"""Shared test setup: huge pages as the command line has them, early
detection of peer-axis broadcasting bugs, and one compilation cache per session.

pytest re-executes itself with glibc's huge-page tunable (workbench.allocator)
before any test starts JAX, so tests and benchmarks run as ``workbench
simulate`` does. The restart waits for ``pytest_configure`` so that pytest's
output capture can first hand the terminal back: a restart while conftest files
are imported would write the new run's report into the capture's temporary file.

Many tests compile the same small scenarios; JAX's persistent compilation cache,
in a directory that lives as long as the session, compiles each program once.
"""

import os
import shutil
import tempfile

# LLVM's -O0 for XLA's CPU code: about a fifth less compile time than -O1
# here, and the suite is mostly compilation (XLA's own passes are unchanged).
# Two different programs may then differ in the last bits where LLVM would
# have contracted a multiply-add, so tests that compare two formulations use a
# tolerance; runs of one program stay bit-identical. Read when JAX starts its
# backend (a test's own flags win).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

from workbench.allocator import reexec_with_huge_pages

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    reexec_with_huge_pages()
    if capture is not None:
        capture.start_global_capturing()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: the controller's cache
        cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
    else:
        cache = tempfile.mkdtemp(prefix="workbench-tests-xla-")
        config.compilation_cache = cache
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    # subprocesses (cluster nodes, a killed run's resume) share the cache
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"


def pytest_unconfigure(config):
    cache = getattr(config, "compilation_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
