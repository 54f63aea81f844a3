"""The mutant 'collect skips a PTE-mapped large folio instead of splitting it'.

A device-private THP that was partly unmapped stays one large folio mapped by
PTEs. A CPU fault on one of its pages runs dmirror_devmem_fault, which asks
migrate_vma_setup for the one page (order 0 because vmf->pte is set). Collect
must split the large folio (migrate_vma_split_folio) to migrate that page; a
collect that skips it migrates nothing, the fault returns, and the CPU faults
again for ever: the livelock the series (d) reviewers discussed (known-bugs 2).
The checker that fires is the fault-retry livelock detector, not the name of
the mutant.
"""

import json

from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.testing.mutant_hunt import HUNTS, hunt


def test_explore_finds_the_livelock_at_once():
    r = hunt("collect_skips_large_folio")
    assert r.found, r.used
    assert "fault livelock" in r.detail
    assert "collect_skips_large_folio" not in r.detail
    assert HUNTS["collect_skips_large_folio"].scenario == "thp_split_vs_fault_page"


def test_cli_explore_bug_reports_the_violation():
    out = CliRunner().invoke(
        main,
        ["explore", "thp_split_vs_fault_page", "-p", "0", "--bug", "collect_skips_large_folio"],
    )
    assert out.exit_code == 1, out.output
    assert "violation" in out.output and "livelock" in out.output


def test_fixed_kernel_splits_and_migrates_back():
    """Same scenario, no mutant, one schedule: clean (the folio is split)."""
    out = CliRunner().invoke(main, ["explore", "thp_split_vs_fault_page", "-p", "0", "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.output.splitlines()[0])
    assert not row["violations"]


def test_found_through_the_unified_walk_too():
    """With series (e) the fault's migrate_vma_setup is hmm_range_fault's walk
    (hmm_vma_handle_migrate_prepare): the same skip livelocks there."""
    from dataclasses import replace

    h = replace(HUNTS["collect_skips_large_folio"], features=frozenset("de"))
    r = hunt("collect_skips_large_folio", hunt_=h)
    assert r.found and "fault livelock" in r.detail
