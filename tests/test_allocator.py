"""glibc's malloc: the huge-page tunable the command line restarts itself
with, and giving the free heap back."""

import json
from pathlib import Path

from workbench.allocator import huge_pages_state, release_free_memory, tuned_environment


def test_tunable_is_added_to_an_empty_environment():
    env = tuned_environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert huge_pages_state(env) == "on"


def test_tunable_is_appended_to_the_users_tunables():
    env = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages_state(env) == "on"


def test_a_users_choice_is_kept():
    user = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert tuned_environment(user) is None  # no restart: the user said off
    assert huge_pages_state(user) == "off"
    assert huge_pages_state({}) == "off"


def _resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def test_released_heap_goes_back_to_the_system():
    # a JSON parse's lists (6 KiB each) freed between small survivors: glibc
    # keeps the free heap, as after loading LEAF's files
    parsed = json.loads(json.dumps([[0.5] * 784 for _ in range(20_000)]))
    survivors = [bytearray(600) for _ in range(20_000)]
    del parsed
    before = _resident_mib()
    release_free_memory()
    assert _resident_mib() < before - 50  # the lists' 120 MiB, most of it back
    assert len(survivors) == 20_000
