"""Series (b)'s device migration entries meet fork and mprotect (issue 14
item 3). MIGRATE_TO_SYS holds mmap_lock from setup to finalize, so only an
eviction (dmirror RELEASE: migrate_device_range, no mmap_lock) leaves them
where fork (copy_nonpresent_pte, copy_huge_non_present_pmd) and mprotect
(change_softleaf_pte, change_non_present_huge_pmd) can rewrite them. The
explorer scenarios fork_vs_eviction, fork_vs_eviction_thp,
mprotect_vs_eviction and mprotect_vs_eviction_thp run with series (a)-(c)
(test_explore runs them clean with one preemption), and the mutants
fork_plain_migration_entry and huge_pmd_plain_migration_entry are found
through them (test_mutants).
"""

from __future__ import annotations

import pytest

from hmmsim.kconfig import KConfig
from hmmsim.testing.explore import Explorer, Sequencer, Until
from hmmsim.testing.scenarios import DEVICE_MIGRATION_TYPES, SCENARIOS, World


def _world(bugs=()):
    cfg = KConfig(
        ram_bytes=64 << 20,
        hugetlb_pages=0,
        features=frozenset("d") | DEVICE_MIGRATION_TYPES,
        bugs=frozenset(bugs),
    )
    return World(cfg)


def test_fork_cannot_link_a_child_into_a_running_rmap_walk():
    """The eviction restores page 2 (its 4th PTE-lock acquire, inside
    remove_migration_ptes' rmap walk) when fork starts. The walk read-holds
    the anon_vma root's rwsem, so fork waits in anon_vma_clone until the
    walk is over and then copies the restored PTE. Without the rwsem, fork
    linked the child and copied the migration entry behind the walk's back:
    the child kept a migration entry for a device page that was then freed
    (found by the fork_vs_eviction scenario)."""
    w = _world()
    ex = Explorer(
        w.k,
        Sequencer(("evict", Until("acquire", "ptl", 4)), ("cpu", None), ("evict", None)),
    )
    check = SCENARIOS["fork_vs_eviction"](ex, w)
    res = ex.run()
    assert res.error is None, res.error
    waited = [s for s in res.trace if s.thread == "cpu" and s.kind == "wait"]
    assert any("anon_vma" in s.what for s in waited), "fork did not wait for the walk"
    check()
    w.check()


@pytest.mark.parametrize("bug", [None, "fork_plain_migration_entry"])
def test_fork_between_unmap_and_restore(bug):
    """fork starts as the eviction restores page 1 (both pages unmapped):
    it waits for that rmap walk, then copies page 2's writable migration
    entry. The fixed kernel makes it a readable device-private migration
    entry in parent and child, which the eviction then restores in both; the
    mutant writes a plain one, whose device-private offset names no page the
    eviction is moving."""
    w = _world([bug] if bug else [])
    ex = Explorer(
        w.k,
        Sequencer(("evict", Until("acquire", "ptl", 3)), ("cpu", None), ("evict", None)),
    )
    check = SCENARIOS["fork_vs_eviction"](ex, w)
    res = ex.run()
    if bug is None:
        assert res.error is None, res.error
        check()
        w.check()
    else:
        failed = res.error
        if failed is None:
            try:
                check()
            except Exception as e:  # noqa: BLE001 - the checker's verdict
                failed = str(e)
        assert failed, "the mutant went unnoticed"
