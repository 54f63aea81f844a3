"""The findings: every bug hmmsim found, upstream or in the model, as data.

Each `Finding` names its replay (a function of `hmmsim.findings.replays`)
and the outcome that replay must have today: `expect` is one of the outcome
kinds of `hmmsim.findings.OUTCOMES` and `match` a regular expression the
outcome's text must contain. docs/findings.md is the prose for each entry
(same names, same order); tests/unit/test_findings.py replays them all and
holds each to its documented outcome, so an entry cannot go stale: a fixed
model bug that comes back, or an open one that stops reproducing, fails CI.

`fix_switch` is for the day a fix of an open upstream bug is modelled
behind a switch (a `KConfig.features` letter): with that switch on, the
expected outcome becomes "clean" and the finding's selftest case is
expected to pass (see `hmmsim.selftests.findings`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hmmsim.findings import replays

#: What a finding is a bug of.
KINDS = {
    "upstream": "a bug in mainline mm/ at the pinned commit",
    "test_hmm": "a bug or quirk of lib/test_hmm.c (the dmirror test driver), modelled faithfully",
    "model": "a bug of the model (it differed from the kernel); fixed",
    "checker": "a bug of the invariant checker (a false report); fixed",
}

#: Its status.
STATUSES = {
    "open": "reproduces at the pin; not fixed upstream as far as we could find",
    "faithful": "reproduces by design: the model does what the C does",
    "question": "the model reproduces it; whether the kernel at the pin does is not settled",
    "fixed": "fixed in the model; the replay now runs clean",
}


@dataclass(frozen=True)
class Finding:
    """One bug hmmsim found.

    name: the replay's name (and its fuzz-findings/NAME.py wrapper);
    title: one line; kind: a key of KINDS; status: a key of STATUSES;
    found_by: the tool and run that found it; where: the kernel function
    (and our model of it); expect: the outcome kind the replay has today;
    match: a regex the outcome's text must contain (empty for "clean");
    replay: the function; tests: where a regression test holds it;
    selftest: the test (TEST_F name) of the findings suite that shows it, if any;
    fix_switch: the KConfig feature that models a fix, once there is one;
    recorded: what the run that found it reported, before any fix;
    requires: the seed series (KConfig features) the buggy code belongs to:
    without them the bug is not there (its selftest case SKIPs).
    """

    name: str
    title: str
    kind: str
    status: str
    found_by: str
    where: str
    expect: str
    match: str
    replay: Callable[[replays.Replay], None]
    tests: str = ""
    selftest: str | None = None
    fix_switch: str | None = None
    recorded: str = ""
    requires: frozenset[str] = frozenset()

    def expected(self, features: frozenset[str] = frozenset()) -> str:
        """The outcome kind expected with these KConfig features on."""
        if self.fix_switch is not None and self.fix_switch in features:
            return "clean"
        if not self.requires <= set(features):
            return "clean"
        return self.expect


FINDINGS: dict[str, Finding] = {}


def _add(f: Finding) -> None:
    assert f.kind in KINDS and f.status in STATUSES, f
    assert f.name not in FINDINGS, f.name
    FINDINGS[f.name] = f


_add(
    Finding(
        name="migrate-shared-thp-fallback-remaps-child-pmd",
        title="device-THP split fallback leaves a fork child's PMD migration entry behind",
        kind="upstream",
        status="open",
        found_by="hmmsim fuzz (features d, THP always)",
        where="mm/migrate_device.c migrate_vma_split_unmapped_folio (since 4265d67e405a, v6.19); "
        "mm/migrate.c remove_migration_pte (hmmsim.mm.migrate._remove_migration_pte)",
        expect="kernel-bug",
        match=r"remove_migration_pte: PMD migration entry .* covers the order-0 folio",
        replay=replays.migrate_shared_thp_fallback_remaps_child_pmd,
        tests="tests/unit/test_migrate_device.py::"
        "test_shared_thp_split_fallback_hits_the_kernels_vm_bug_on",
        selftest="migrate_anon_huge_err_forked",
        requires=frozenset({"d"}),
        recorded="invariant at step 5: PMD at 0x100000a00000 maps pfn 0x3fffffe00 that is not a "
        "folio head (+3 more)",
    )
)
_add(
    Finding(
        name="dmirror-migrate-to-sys-oom-maps-unmigrated-dst",
        title="MIGRATE_TO_SYS out of memory: finalize leaves a migration entry naming a freed page",
        kind="test_hmm",
        status="faithful",
        found_by="hmmsim.testing.inject (site alloc_pages, 2nd hit)",
        where="lib/test_hmm.c dmirror_migrate_to_system (hmmsim.drivers.test_hmm)",
        expect="invariant",
        match=r"rss (anon|file) counter",
        replay=replays.dmirror_migrate_to_sys_oom_maps_unmigrated_dst,
        tests="tests/unit/test_fault_injection.py",
        recorded="rss anon counter 8 but 7 pages mapped; rss file counter 0 but 1 pages mapped",
    )
)
_add(
    Finding(
        name="test_hmm-two-mirrors-stale-pt",
        title="two opens of one dmirror device: the second mirror's pt goes stale",
        kind="test_hmm",
        status="faithful",
        found_by="hmmsim fuzz (features d)",
        where="lib/test_hmm.c dmirror_interval_invalidate",
        expect="invariant",
        match=r"mirror <dmirror dev=2 pt=1> maps 0x100000000000",
        replay=replays.test_hmm_two_mirrors_stale_pt,
        recorded="invariant at step 6: pid 1: mirror <dmirror dev=2 pt=1> maps 0x100000000000 -> "
        "0x204 but the CPU has pte 0x80003fffeffff867",
    )
)
_add(
    Finding(
        name="test_hmm-read-after-opener-exit-livelock",
        title="READ through an fd whose mm is gone spun forever in dmirror_read()",
        kind="model",
        status="fixed",
        found_by="hmmsim fuzz",
        where="lib/test_hmm.c dmirror_fault (hmmsim.drivers.test_hmm dmirror.dmirror_fault)",
        expect="clean",
        match="",
        replay=replays.test_hmm_read_after_opener_exit_livelock,
        tests="tests/unit/test_dmirror_dead_mm.py",
        recorded="HMM_DMIRROR_READ never returned",
    )
)
_add(
    Finding(
        name="test_hmm-read-owned-device-private-oops",
        title="a device READ of pages already on that device oopses in page_address()",
        kind="test_hmm",
        status="faithful",
        found_by="hmmsim fuzz",
        where="lib/test_hmm.c dmirror_do_fault / dmirror_do_read",
        expect="oops",
        match=r"oops in dmirror_do_read: .* no linear mapping",
        replay=replays.test_hmm_read_owned_device_private_oops,
        recorded="KernelOops in dmirror_do_read: no linear mapping (page_address)",
    )
)
_add(
    Finding(
        name="shared-anon-munmap-i_count",
        title="MAP_SHARED|MAP_ANONYMOUS mappings held no file reference",
        kind="model",
        status="fixed",
        found_by="hmmsim fuzz",
        where="mm/shmem.c shmem_zero_setup (hmmsim.mm.shmem); fixed in eb310b7",
        expect="clean",
        match="",
        replay=replays.shared_anon_munmap_i_count,
        tests="tests/regress/test_shared_anon_inode_refcount.py",
        recorded="exception at step 2 (munmap): AttributeError: 'shmem_inode' object has no "
        "attribute 'i_count'",
    )
)
_add(
    Finding(
        name="large-folio-reuse-moves-anon-rmap",
        title="write-fault reuse of a PTE-mapped THP moved the whole folio's anon rmap",
        kind="model",
        status="fixed",
        found_by="hmmsim fuzz (features d, THP always)",
        where="mm/memory.c __wp_can_reuse_large_anon_folio (hmmsim.mm.memory); fixed in eb310b7",
        expect="clean",
        match="",
        replay=replays.large_folio_reuse_moves_anon_rmap,
        tests="tests/regress/test_large_folio_reuse_keeps_anon_rmap.py",
        recorded="invariant at step 6: anon page 0x4b8 at 0x1000002b8000 is not in the vma's "
        "anon_vma chain (+327 more)",
    )
)
_add(
    Finding(
        name="split-protnone-thp-inverted-pfn",
        title="splitting a PROT_NONE huge PMD added to the inverted PFN",
        kind="model",
        status="fixed",
        found_by="hmmsim fuzz (features a, b, d)",
        where="mm/huge_memory.c __split_huge_pmd_locked, x86 pte_advance_pfn "
        "(hmmsim.mm.huge_memory)",
        expect="clean",
        match="",
        replay=replays.split_protnone_thp_inverted_pfn,
        tests="tests/unit/test_huge_memory.py::"
        "test_prot_none_thp_is_checked_and_splits_with_inverted_pfns",
        recorded="exception at step 5 (munmap): KernelBug: folio_remove_rmap_ptes: mapcount "
        "underflow on <page pfn=0x28a ref=0 map=-1 flags=dirty|PGTY_buddy>",
    )
)
_add(
    Finding(
        name="split-coherent-thp-calls-private-split-cb",
        title="splitting a device-coherent THP ran the device-private folio_split callback",
        kind="model",
        status="fixed",
        found_by="hmmsim fuzz --steps 200000 --seed 1 (features d, e)",
        where="mm/huge_memory.c zone_device_private_split_cb (hmmsim.mm.huge_memory); "
        "fixed in e3aaa15",
        expect="clean",
        match="",
        replay=replays.split_coherent_thp_calls_private_split_cb,
        tests="tests/unit/test_migrate_device.py::"
        "test_coherent_thp_split_skips_the_private_split_callback",
        recorded="invariant at step 6: pid 1: rss anon counter 512 but 511 pages mapped (+11 more)",
    )
)
_add(
    Finding(
        name="explore-eviction-vs-cpu-fault",
        title="a device-private CPU fault looked the page up before re-checking the PTE",
        kind="model",
        status="fixed",
        found_by="hmmsim explore eviction_vs_cpu_fault -p 2",
        where="mm/memory.c do_swap_page (hmmsim.mm.memory.do_device_private_fault); "
        "fixed in e3aaa15",
        expect="clean",
        match="",
        replay=replays.explore_eviction_vs_cpu_fault,
        tests="tests/races/test_explore.py::test_cpu_fault_meets_a_finished_eviction",
        recorded="the CPU fault's device-page lookup failed after RELEASE memunmapped the chunk",
    )
)
_add(
    Finding(
        name="invariants-protnone-huge-pmd",
        title="the invariant checker read PROT_NONE huge PMDs with e & 1, not pmd_present()",
        kind="checker",
        status="fixed",
        found_by="hmmsim fuzz (features d, THP always)",
        where="hmmsim.testing.invariants (check of PMD leaves); fixed in 6c7f865",
        expect="clean",
        match="",
        replay=replays.invariants_protnone_huge_pmd,
        tests="tests/unit/test_huge_memory.py::"
        "test_prot_none_thp_is_checked_and_splits_with_inverted_pfns",
        recorded="invariant at step 3: PMD at 0x100000200000: invalid PMD softleaf "
        "0x40fffffffa009a0 (+4 more)",
    )
)
