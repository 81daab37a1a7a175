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

import jax

from workbench.allocator import needs_restart, reexec_with_huge_pages

# LLVM's -O0 for XLA's CPU code: about a fifth less compile time than -O1
# here, and the suite is mostly compilation (XLA's own passes are unchanged).
# Two different programs may then differ in the last bits where LLVM would
# have contracted a multiply-add, so tests that compare two formulations use a
# tolerance; runs of one program stay bit-identical. The code it makes runs
# 2-3x slower (FEMNIST CNN step: 1.23 s against 0.47 s), so benchmarks keep
# the flags a user runs with.
FAST_COMPILE = "--xla_backend_optimization_level=0"

jax.config.update("jax_numpy_rank_promotion", "raise")


def suite_xla_flags(benchmarks: bool, flags: str | None) -> str | None:
    """XLA_FLAGS for a session: the user's own, else fast compilation unless
    benchmarks run."""
    if flags is not None or benchmarks:
        return flags
    return FAST_COMPILE


def pytest_configure(config):
    # read when JAX starts its backend, after this hook; kept by the restart
    benchmarks = config.getoption("benchmark_enable", False)
    flags = suite_xla_flags(benchmarks, os.environ.get("XLA_FLAGS"))
    if flags is not None:
        os.environ["XLA_FLAGS"] = flags
    capture = config.pluginmanager.getplugin("capturemanager")
    if needs_restart():  # the restarted process leaves capture alone: with
        if capture is not None:  # xdist, a capture stopped and started again
            capture.stop_global_capturing()  # closed the file that -x's report
        reexec_with_huge_pages()  # was written to at exit
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


def pytest_report_collectionfinish(config, start_path, items):
    return f"XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}"


def pytest_unconfigure(config):
    cache = getattr(config, "compilation_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
