"""The huge-page tunable the command line restarts itself with."""

from workbench.allocator import huge_pages_state, tuned_environment


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
