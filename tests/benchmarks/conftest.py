"""Benchmarks run with huge pages, as the command line does (workbench.allocator).

pytest re-executes itself here, before JAX starts, when the tunable is not set.
"""

from workbench.allocator import reexec_with_huge_pages

reexec_with_huge_pages()
