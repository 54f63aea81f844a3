"""`hmmsim explain WORD`: decode PTE/PMD words, softleaf entries, migrate and HMM PFNs.

Words are built with the model's own encoders (include/), so each test checks
that the decoder reads back what the encoder wrote, under each configuration,
and that the same number reads differently where a series changes the layout.
"""

import pytest
from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.explain import (
    explain,
    format_explain,
    parse_word,
    read_hmm,
    read_mpfn,
    read_pmd,
    read_pte,
    read_softleaf,
)
from hmmsim.include.hmm import HmmPfnLayout
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_WRITE,
    migrate_pfn,
)
from hmmsim.include.pgtable import (
    _PAGE_PSE,
    _PAGE_SWP_EXCLUSIVE,
    PAGE_READONLY,
    PAGE_SHARED,
    mk_table_entry,
    pfn_pmd,
    pfn_pte,
)
from hmmsim.include.swapops import SwapLayout
from hmmsim.kconfig import KConfig

PIN = KConfig()
B = KConfig(features={"b", "d"})
ABC = KConfig(features={"a", "b", "c", "d"})
E = KConfig(features={"d", "e"})
K612 = KConfig(kernel="6.12")


def test_parse_word():
    assert parse_word("0x1f") == 31
    assert parse_word("31") == 31
    assert parse_word("0xffff_ffff_ffff_ffff") == (1 << 64) - 1
    for bad in ("zz", "-5", "0x1ffffffffffffffff", "", "1.5"):
        with pytest.raises(ValueError):
            parse_word(bad)


def test_present_pte_and_pmd():
    w = pfn_pte(0x1234, PAGE_SHARED)
    r = read_pte(PIN, w)
    assert r.plausible and "present pfn=0x1234" in r.text and "RW" in r.text
    huge = pfn_pmd(0x400, PAGE_READONLY) | _PAGE_PSE
    r = read_pmd(PIN, huge)
    assert r.plausible and "huge PMD" in r.text and "pfn=0x400" in r.text
    r = read_pmd(PIN, huge | (1 << 13))
    assert not r.plausible and "2 MiB" in r.why
    r = read_pmd(PIN, mk_table_entry(0x777))
    assert r.plausible and "PTE table at pfn 0x777" in r.text
    assert read_pte(PIN, 0).text.startswith("pte_none")


@pytest.mark.parametrize("cfg", [PIN, B, ABC, K612], ids=["pin", "b", "abc", "6.12"])
def test_softleaf_round_trip(cfg):
    swp = SwapLayout(cfg)
    dp = swp.make_writable_device_private_entry(0x3FFFDFFFF)
    pte = swp.swp_entry_to_pte(dp) | _PAGE_SWP_EXCLUSIVE
    r = read_pte(cfg, pte)
    label = "offset" if cfg.has("c") else "pfn"
    assert r.plausible, r.why
    assert f"SOFTLEAF_DEVICE_PRIVATE_WRITE {label}=0x3fffdffff" in r.text
    assert "SWP_DEVICE_WRITE" in r.text and "SWP_EXCLUSIVE" in r.text
    assert read_pmd(cfg, swp.swp_entry_to_pte(dp)).plausible
    r = read_softleaf(cfg, dp)
    assert r.plausible and f"type {swp.SWP_DEVICE_WRITE} SWP_DEVICE_WRITE" in r.text
    mig = swp.make_readable_migration_entry(0x1234)
    assert "SOFTLEAF_MIGRATION_READ pfn=0x1234" in read_pte(cfg, swp.swp_entry_to_pte(mig)).text
    # a device-exclusive entry never sits in a PMD
    ex = swp.swp_entry_to_pte(swp.make_device_exclusive_entry(0x99))
    assert read_pte(cfg, ex).plausible
    r = read_pmd(cfg, ex)
    assert not r.plausible and "softleaf_is_valid_pmd_entry" in r.why


def test_series_b_renames_the_same_number():
    """The pinned device-private write PTE is a device-private migration entry under (b)."""
    w = 0xE7FFF80004000002  # pinned: SWP_DEVICE_WRITE (28)
    assert "SOFTLEAF_DEVICE_PRIVATE_WRITE" in read_pte(PIN, w).text
    assert "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ" in read_pte(B, w).text
    # and 6.12's device-exclusive types have their own names
    swp = SwapLayout(K612)
    e = swp.make_readable_device_exclusive_entry(5)
    assert "SWP_DEVICE_EXCLUSIVE_READ" in read_softleaf(K612, e).text


def test_softleaf_problems():
    r = read_softleaf(PIN, 1 << 63)
    assert not r.plausible and "63 bits" in r.why
    swp = SwapLayout(PIN)
    bad = swp.swp_entry(swp.SWP_DEVICE_WRITE, 1 << 40)  # offset bits above the PFN
    r = read_softleaf(PIN, bad)
    assert not r.plausible and "above the PFN" in r.why


def test_mpfn_follows_series_a_and_c():
    v = migrate_pfn(0x1234) | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE | MIGRATE_PFN_COMPOUND
    r = read_mpfn(PIN, v)
    assert r.plausible
    assert r.text == (
        "pfn=0x1234 MIGRATE_PFN_VALID|MIGRATE_PFN_MIGRATE|MIGRATE_PFN_WRITE|MIGRATE_PFN_COMPOUND"
    )
    dp = migrate_pfn(0xFFFF) | MIGRATE_PFN_DEVICE_PRIVATE
    r = read_mpfn(PIN, dp)
    assert not r.plausible and "series (a)" in r.why
    r = read_mpfn(KConfig(features={"a", "d"}), dp)
    assert r.plausible and "pfn=0xffff" in r.text and "DEVICE_PRIVATE" in r.text
    r = read_mpfn(ABC, dp)
    assert r.plausible and "device-private offset=0xffff" in r.text
    assert not read_mpfn(PIN, 1 << 2).plausible  # formerly MIGRATE_PFN_LOCKED


def test_hmm_words_follow_the_order_shift():
    for cfg in (PIN, ABC, E):
        L = HmmPfnLayout(cfg)
        w = L.encode(0xC00, L.HMM_PFN_VALID | L.HMM_PFN_WRITE, order=9)
        r = read_hmm(cfg, w)
        assert r.plausible and "order=9" in r.text and "HMM_PFN_WRITE" in r.text
        assert f"HMM_PFN_ORDER_SHIFT {L.HMM_PFN_ORDER_SHIFT}" in r.text
    # the pinned order-9 word read under (e), whose ORDER_SHIFT is 51: another order
    w = HmmPfnLayout(PIN).encode(0xC00, HmmPfnLayout(PIN).HMM_PFN_VALID, order=9)
    assert "order=9" not in read_hmm(E, w).text
    L = HmmPfnLayout(ABC)
    r = read_hmm(ABC, L.encode(0xFFFF, L.HMM_PFN_VALID | L.HMM_PFN_DEVICE_PRIVATE))
    assert "device-private offset=0xffff" in r.text and "HMM_PFN_DEVICE_PRIVATE" in r.text
    # at the pin bit BPL-7 is the top of the order field: order 16 is no mapping size
    r = read_hmm(PIN, (1 << 63) | (1 << 57))
    assert not r.plausible and "map order 16" in r.why


def test_all_readings_of_zero_and_ruled_out_ones():
    assert all(r.plausible for r in explain(PIN, 0))
    lines = format_explain(PIN, 0xE7FFF80004000002)
    kinds = [x.split()[0] for x in lines[1:]]
    assert kinds[:2] == ["pte", "pmd"]
    assert any(x.startswith("  not softleaf: bit 63") for x in lines)
    only = format_explain(PIN, 0xE7FFF80004000002, "swp")
    assert len(only) == 2 and "implausible" in only[1]


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_cli():
    r = run("explain", "0xe7fff80004000002")
    assert r.exit_code == 0, r.output
    assert "SOFTLEAF_DEVICE_PRIVATE_WRITE pfn=0x3fffdffff" in r.output
    r = run("explain", "0xe7fff80004000002", "--feature", "b", "--as", "pte")
    assert r.exit_code == 0 and "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ" in r.output
    r = run("explain", "0xc20000000000ffff", "--feature", "a,b,c", "--as", "hmm")
    assert r.exit_code == 0 and "device-private offset=0xffff" in r.output
    r = run("explain", str(0x2824B), "--as", "mpfn")
    assert r.exit_code == 0 and "pfn=0xa09" in r.output
    r = run("explain", "0", "--kernel", "6.12")
    assert r.exit_code == 0 and "linux-6.12" in r.output


def test_cli_bad_input_is_one_line_exit_2():
    for args in (
        ("explain", "zz"),
        ("explain", "--", "-5"),
        ("explain", "0x1ffffffffffffffff"),
        ("explain", "1", "--as", "pgd"),
        ("explain", "1", "--feature", "q"),
        ("explain",),
    ):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hmmsim: error:"), r.output


def test_series_e_compound_hole_word_is_plausible():
    """The word series (e)'s walk writes for a PMD-sized hole it collects
    (MIGRATE | COMPOUND, order 9, no VALID: hmmsim.mm.hmm) reads as plausible;
    an order without VALID and without that pair is still ruled out."""
    L = HmmPfnLayout(E)
    hole = L.encode(0, L.HMM_PFN_MIGRATE | L.HMM_PFN_COMPOUND, order=9)
    assert hole == 0x0348000000000000
    r = read_hmm(E, hole)
    assert r.plausible, r.why
    assert "HMM_PFN_MIGRATE" in r.text and "HMM_PFN_COMPOUND" in r.text
    r = read_hmm(E, L.encode(0, 0, order=9))
    assert not r.plausible and "without HMM_PFN_VALID" in r.why
