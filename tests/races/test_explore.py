"""The deterministic interleaving explorer and the built-in race scenarios."""

import pytest

from hmmsim.kernel import Kernel
from hmmsim.locking import Lock
from hmmsim.testing.explore import Explorer, RandomPolicy, ReplayPolicy, explore
from hmmsim.testing.scenarios import SCENARIOS, make_runner


def two_lock_world(policy):
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    a, b = Lock(k, "A"), Lock(k, "B")
    ex = Explorer(k, policy)

    def ab():
        with a, b:
            pass

    def ba():
        with b, a:
            pass

    ex.spawn("t1", ab)
    ex.spawn("t2", ba)
    return ex.run()


def test_lock_order_inversion_is_found_as_a_deadlock_with_its_trace():
    report = explore(two_lock_world, preemptions=1, name="abba")
    assert report.complete and report.schedules >= 2
    assert report.violations, "the ABBA deadlock needs one preemption"
    v = report.violations[0]
    assert v.error_kind == "Deadlock" and "t1 waits" in v.error and "t2 waits" in v.error
    assert "acquire" in v.format_trace()
    # the same choices replay the same interleaving
    again = two_lock_world(ReplayPolicy(v.choices))
    assert again.error == v.error and [s.what for s in again.trace] == [s.what for s in v.trace]


def test_no_preemption_means_no_deadlock():
    report = explore(two_lock_world, preemptions=0, name="abba")
    # which thread starts is a free choice; with no preemption each runs to the end
    assert report.schedules == 2 and not report.violations


def test_livelock_bound():
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    lock = Lock(k, "spin")
    ex = Explorer(k, max_steps=50)

    def spinner():
        while True:
            with lock:
                pass

    ex.spawn("spin", spinner)
    res = ex.run()
    assert res.error_kind == "Livelock"


def test_random_schedules_are_reproducible():
    run = make_runner("two_devices_migrate_same_range")
    a, b = run(RandomPolicy(7)), run(RandomPolicy(7))
    assert a.choices == b.choices and len(a.trace) == len(b.trace) and a.error is None


#: The longest one-preemption searches (6-13 s each on 2 cores) run with
#: `-m slow`; their mutant hunts stay in the default run.
SLOW_SCENARIOS = {
    "thp_split_vs_fault_page",
    "eviction_vs_cpu_fault",
    "hmm_fault_on_locked_device_page",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=(pytest.mark.slow,) if n in SLOW_SCENARIOS else ())
        for n in sorted(SCENARIOS)
    ],
)
def test_scenario_clean_with_one_preemption(name):
    report = explore(make_runner(name), preemptions=1, max_schedules=2000, name=name)
    assert report.complete and report.schedules > 1
    assert not report.violations, (
        report.violations[0].error + "\n" + (report.violations[0].format_trace())
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_clean_with_two_preemptions(name):
    report = explore(make_runner(name), preemptions=2, max_schedules=100000, name=name)
    assert report.complete
    assert not report.violations, report.violations[0].error


def test_cpu_fault_meets_a_finished_eviction():
    """Found by the two-preemption search: the CPU thread reads a
    device-private PTE, is preempted, and RELEASE evicts the chunk and
    memunmaps it. The fault must re-check the PTE under its lock before it
    looks up the device page (the kernel only forms the pointer before the
    check), so it sees the PTE changed and retries on the system page."""
    choices = [0] * 29 + [1, 0, 0, 0, 0, 1] + [0] * 35
    res = make_runner("eviction_vs_cpu_fault")(ReplayPolicy(choices))
    assert res.error is None, res.error
    assert any(s.thread == "evict" for s in res.trace) and any(s.thread == "cpu" for s in res.trace)


def test_sequencer_scripts_the_abba_deadlock():
    from hmmsim.testing.explore import Sequencer, Until

    # t1 takes A and stops at its acquire of B; t2 takes B and blocks on A; t1 blocks on B
    res = two_lock_world(Sequencer(("t1", Until("acquire", "B")), ("t2", None), ("t1", None)))
    assert res.error_kind == "Deadlock"
    order = [(s.thread, s.kind, s.what) for s in res.trace if s.kind == "acquire"]
    assert order[:3] == [("t1", "acquire", "A"), ("t1", "acquire", "B"), ("t2", "acquire", "B")]
    # the other order of the same two threads is clean
    assert two_lock_world(Sequencer(("t1", None), ("t2", None))).error is None


@pytest.mark.parametrize("bug", [None, "hmm_fault_spin"])
def test_sequencer_hmm_fault_on_a_page_a_cpu_fault_holds(bug):
    """Kernel-reference 9.1, scripted: the CPU fault locks the device page and
    drops the PTE lock; then the other device's hmm_range_fault meets the
    locked page. The fixed kernel sleeps on the page lock (the CPU fault then
    finishes and the read succeeds); the old kernel spins: a livelock."""
    from hmmsim.kconfig import KConfig
    from hmmsim.testing.explore import Sequencer, Until
    from hmmsim.testing.scenarios import SCENARIOS, World

    cfg = KConfig(ram_bytes=64 << 20, hugetlb_pages=0, bugs=frozenset({bug} if bug else ()))
    w = World(cfg)
    ex = Explorer(w.k, Sequencer(
        ("cpu", Until("lockless")),
        ("cpu", Until("release", "ptl")),
        ("dev1", None),
        ("cpu", None),
    ))  # fmt: skip
    check = SCENARIOS["hmm_fault_on_locked_device_page"](ex, w)
    res = ex.run()
    if bug is None:
        assert res.error is None, res.error
        check()
        w.check()
        assert any(s.thread == "dev1" and s.kind == "wait" for s in res.trace)
    else:
        assert res.error_kind == "Livelock" and "busy-retries" in res.error
