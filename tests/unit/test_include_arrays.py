"""Array forms of the include/ encoders equal their scalar forms, element by element.

Each ``<name>_array`` in hmmsim.include (PTE/PMD words, swap entries and the
softleaf predicates of every seed layout, migrate PFNs, HMM PFNs) is checked
against ``[<name>(w) for w in words]`` on Hypothesis-drawn words: raw 64-bit
values, and words the scalar encoders build (present PTEs and PMDs of every
protection, swap PTEs of every type with random soft bits).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmsim.include import migrate as mig
from hmmsim.include import pgtable as pt
from hmmsim.include import swapops as so
from hmmsim.include.hmm import HmmPfnLayout
from hmmsim.kconfig import KConfig

U64 = (1 << 64) - 1

#: every SwapLayout class the seed configurations build
SWAP_CONFIGS = {
    "pin": KConfig(),
    "b": KConfig(features=frozenset({"b", "d"})),
    "abc": KConfig(features=frozenset({"a", "b", "c", "d"})),
    "6.12": KConfig(kernel="6.12"),
    "6.12+b": KConfig(kernel="6.12", features=frozenset({"b"})),
}
LAYOUTS = {name: so.SwapLayout(cfg) for name, cfg in SWAP_CONFIGS.items()}

#: every HMM PFN layout: pinned, (c), (e), both resolutions, on 64 and 32 bits
HMM_CONFIGS = [
    dict(features=frozenset({"d"})),
    dict(features=frozenset({"a", "b", "c", "d"})),
    dict(features=frozenset({"d", "e"})),
    dict(features=frozenset({"a", "b", "c", "d", "e"}), conflict_resolution="c-first"),
    dict(features=frozenset({"a", "b", "c", "d", "e"}), conflict_resolution="e-first"),
]
HMM_LAYOUTS = [
    HmmPfnLayout(KConfig(bits_per_long=bpl, **kw)) for kw in HMM_CONFIGS for bpl in (64, 32)
]

PROTS = sorted(set(pt.protection_map)) + [pt._PAGE_TABLE]
SOFT_FLAGS = [
    pt._PAGE_ACCESSED,
    pt._PAGE_DIRTY,
    pt._PAGE_SAVED_DIRTY,
    pt._PAGE_SOFT_DIRTY,
    pt._PAGE_UFFD_WP,
    pt._PAGE_SPECIAL,
    pt._PAGE_PSE,
    pt._PAGE_RW,
]
SWP_SOFT = [pt._PAGE_SWP_SOFT_DIRTY, pt._PAGE_SWP_UFFD_WP, pt._PAGE_SWP_EXCLUSIVE]

raw = st.integers(0, U64)
pfns = st.integers(0, (1 << 40) - 1)


@st.composite
def present_word(draw):
    w = pt.pfn_pte(draw(pfns), draw(st.sampled_from(PROTS)))
    for f in draw(st.lists(st.sampled_from(SOFT_FLAGS), max_size=4)):
        w |= f
    return w


@st.composite
def swap_word(draw):
    entry = so.SwapLayout.swp_entry(draw(st.integers(0, 31)), draw(st.integers(0, U64)))
    if draw(st.booleans()):
        entry |= so.SWP_MIG_YOUNG
    if draw(st.booleans()):
        entry |= so.SWP_MIG_DIRTY
    w = so.SwapLayout.swp_entry_to_pte(entry)
    for f in draw(st.lists(st.sampled_from(SWP_SOFT), max_size=3)):
        w |= f
    return w


word = st.one_of(raw, present_word(), swap_word(), st.sampled_from([0, 0x20, 0x40, 0x60]))
words = st.lists(word, min_size=0, max_size=40)


def same(array_fn, scalar_fn, ws, *args):
    """array_fn(ws, *args) equals [scalar_fn(w, *args) for w in ws], dtype included."""
    got = array_fn(np.array(ws, dtype=np.uint64), *args)
    want = [scalar_fn(w, *args) for w in ws]
    assert isinstance(got, np.ndarray) and got.shape == (len(ws),)
    assert got.tolist() == want, (ws, args)
    return got


# --- pgtable.py ----------------------------------------------------------------------------
PTE_PREDICATES = [
    "pte_none",
    "pte_present",
    "pte_protnone",
    "pte_write",
    "pte_dirty",
    "pte_young",
    "pte_special",
    "pte_soft_dirty",
    "pte_uffd_wp",
    "pte_exec",
    "pte_swp_soft_dirty",
    "pte_swp_uffd_wp",
    "pte_swp_exclusive",
    "pmd_none",
    "pmd_present",
    "pmd_trans_huge",
    "pmd_leaf",
    "pmd_write",
    "pmd_dirty",
    "pmd_young",
]
PTE_TRANSFORMS = [
    "pte_pfn",
    "pmd_pfn",
    "table_entry_pfn",
    "protnone_mask",
    "mksaveddirty_shift",
    "clear_saveddirty_shift",
    "pte_mkwrite_novma",
    "pte_wrprotect",
    "pte_mkdirty",
    "pte_mkclean",
    "pte_mkyoung",
    "pte_mkold",
    "pte_mkspecial",
    "pte_mkuffd_wp",
    "pte_swp_mksoft_dirty",
    "pte_swp_mkuffd_wp",
]


@settings(max_examples=80, deadline=None)
@given(ws=words)
def test_pte_predicates(ws):
    for name in PTE_PREDICATES:
        got = same(getattr(pt, name + "_array"), getattr(pt, name), ws)
        assert got.dtype == np.bool_


@settings(max_examples=80, deadline=None)
@given(ws=words)
def test_pte_transforms(ws):
    for name in PTE_TRANSFORMS:
        got = same(getattr(pt, name + "_array"), getattr(pt, name), ws)
        assert got.dtype in (np.uint64, np.int64)


@settings(max_examples=50, deadline=None)
@given(ws=words, prot=st.sampled_from(PROTS))
def test_pte_pmd_modify(ws, prot):
    same(pt.pte_modify_array, pt.pte_modify, ws, prot)
    same(pt.pmd_modify_array, pt.pmd_modify, ws, prot)


@settings(max_examples=50, deadline=None)
@given(old=words, new=words)
def test_flip_protnone_guard(old, new):
    n = min(len(old), len(new))
    old, new = old[:n], new[:n]
    for mask in (pt.PTE_PFN_MASK, pt.PHYSICAL_PMD_PAGE_MASK):
        got = pt.flip_protnone_guard_array(np.array(old, np.uint64), np.array(new, np.uint64), mask)
        want = [pt.flip_protnone_guard(o, v, mask) for o, v in zip(old, new, strict=True)]
        assert got.tolist() == want


@settings(max_examples=50, deadline=None)
@given(ps=st.lists(pfns, max_size=40), prot=st.sampled_from(PROTS))
def test_pfn_pte(ps, prot):
    got = pt.pfn_pte_array(np.array(ps, dtype=np.uint64), prot)
    assert got.dtype == np.uint64
    assert got.tolist() == [pt.pfn_pte(p, prot) for p in ps]


@settings(max_examples=60, deadline=None)
@given(addrs=st.lists(st.integers(0, (1 << 47) - 1), max_size=40))
def test_table_indices(addrs):
    a = np.array(addrs, dtype=np.int64)
    assert pt.pte_index_array(a).tolist() == [pt.pte_index(x) for x in addrs]
    assert pt.pmd_index_array(a).tolist() == [pt.pmd_index(x) for x in addrs]


# --- swapops.py: layout-free encoders -------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(ws=words)
def test_swap_pte_codecs(ws):
    L = so.SwapLayout
    same(so.pte_to_swp_entry_array, L.pte_to_swp_entry, ws)
    same(so.pmd_to_swp_entry_array, L.pmd_to_swp_entry, ws)
    same(so.softleaf_from_pte_array, L.softleaf_from_pte, ws)
    same(so.softleaf_from_pmd_array, L.softleaf_from_pmd, ws)
    same(so.is_swap_pte_array, L.is_swap_pte, ws)
    same(so.swp_type_array, L.swp_type, ws)
    same(so.swp_offset_array, L.swp_offset, ws)
    same(so.softleaf_is_none_array, L.softleaf_is_none, ws)
    # an entry -> PTE -> entry round trip through the array forms
    entries = so.softleaf_from_pte_array(np.array(ws, dtype=np.uint64))
    same(so.swp_entry_to_pte_array, L.swp_entry_to_pte, entries.tolist())
    back = so.pte_to_swp_entry_array(so.swp_entry_to_pte_array(entries))
    assert back.tolist() == entries.tolist()


@settings(max_examples=50, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 31), st.integers(0, U64)), max_size=40),
)
def test_swp_entry(pairs):
    types = np.array([t for t, _ in pairs], dtype=np.int64)
    offs = np.array([o for _, o in pairs], dtype=np.uint64)
    got = so.swp_entry_array(types, offs)
    assert got.dtype == np.uint64
    assert got.tolist() == [so.SwapLayout.swp_entry(t, o) for t, o in pairs]
    # one type for every offset broadcasts
    assert so.swp_entry_array(7, offs).tolist() == [so.SwapLayout.swp_entry(7, o) for _, o in pairs]


@pytest.mark.parametrize("bad", [-1, 32, 63])
def test_swp_entry_rejects_types_like_the_scalar_form(bad):
    with pytest.raises(ValueError):
        so.SwapLayout.swp_entry(bad, 1)
    with pytest.raises(ValueError):
        so.swp_entry_array(np.array([1, bad]), np.array([1, 1], dtype=np.uint64))


# --- swapops.py: the predicates of every seed layout ------------------------------------------
LAYOUT_PREDICATES = [
    "softleaf_is_swap",
    "softleaf_is_migration",
    "softleaf_is_migration_write",
    "softleaf_is_migration_read",
    "softleaf_is_migration_read_exclusive",
    "softleaf_is_device_private",
    "softleaf_is_device_private_write",
    "softleaf_is_device_exclusive",
    "softleaf_is_hwpoison",
    "softleaf_is_marker",
    "softleaf_has_pfn",
    "softleaf_is_valid_pmd_entry",
    "non_swap_entry",
    "softleaf_is_migration_device_private",
    "softleaf_is_migration_device_private_read",
    "softleaf_is_migration_device_private_read_exclusive",
    "softleaf_is_migration_device_private_write",
    "is_writable_device_exclusive_entry",
]

#: entries with a type 0..31, as the decoders produce them (0 included)
entries = st.lists(
    st.one_of(
        st.just(0),
        st.builds(so.SwapLayout.swp_entry, st.integers(0, 31), st.integers(0, U64)),
    ),
    max_size=40,
)


def _has_scalar(L, name):
    try:
        getattr(L, name)
    except AttributeError:
        return False
    return True


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@settings(max_examples=60, deadline=None)
@given(es=entries)
def test_layout_predicates(layout, es):
    L = LAYOUTS[layout]
    for name in LAYOUT_PREDICATES:
        if not _has_scalar(L, name):
            if name == "softleaf_is_migration_device_private":
                # without (b) no such type exists: the array form says no everywhere
                got = L.softleaf_is_migration_device_private_array(np.array(es, dtype=np.uint64))
                assert not got.any() and got.shape == (len(es),)
            else:
                assert not _has_scalar(L, name + "_array")
            continue
        got = same(getattr(L, name + "_array"), getattr(L, name), es)
        assert got.dtype == np.bool_


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@settings(max_examples=60, deadline=None)
@given(es=entries)
def test_layout_decoders(layout, es):
    L = LAYOUTS[layout]
    a = np.array(es, dtype=np.uint64)
    assert L.softleaf_type_array(a).tolist() == [int(L.softleaf_type(e)) for e in es]
    for name in (
        "softleaf_to_pfn",
        "swp_offset_pfn",
        "softleaf_to_marker",
        "softleaf_is_migration_young",
        "softleaf_is_migration_dirty",
        "make_migration_entry_young",
        "make_migration_entry_dirty",
    ):
        same(getattr(L, name + "_array"), getattr(L, name), es)


def test_softleaf_type_array_rejects_what_the_scalar_rejects():
    L = LAYOUTS["pin"]
    bad = 40 << so.SWP_TYPE_SHIFT
    with pytest.raises(ValueError):
        L.softleaf_type(bad)
    with pytest.raises(ValueError):
        L.softleaf_type_array(np.array([0, bad], dtype=np.uint64))


def test_array_forms_warn_like_the_scalar_forms():
    seen = []
    L = so.SwapLayout(KConfig(), warn=seen.append)
    swap = L.swp_entry(0, 5)
    L.softleaf_to_pfn(swap)
    assert len(seen) == 1
    L.softleaf_to_pfn_array(np.array([swap], dtype=np.uint64))
    assert len(seen) == 2
    L.softleaf_to_pfn_array(np.array([L.make_readable_migration_entry(5)], dtype=np.uint64))
    assert len(seen) == 2


# --- migrate.py, hmm.py ---------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(ps=st.lists(st.integers(0, (1 << 58) - 1), max_size=40), ws=words)
def test_migrate_pfns(ps, ws):
    got = mig.migrate_pfn_array(np.array(ps, dtype=np.uint64))
    assert got.dtype == np.uint64 and got.tolist() == [mig.migrate_pfn(p) for p in ps]
    same(mig.migrate_pfn_to_pfn_array, mig.migrate_pfn_to_pfn, ws)
    same(mig.migrate_pfn_flags_array, mig.migrate_pfn_flags, ws)


@pytest.mark.parametrize("i", range(len(HMM_LAYOUTS)))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hmm_pfns(i, data):
    L = HMM_LAYOUTS[i]
    ws = data.draw(st.lists(st.integers(0, (1 << L.bits_per_long) - 1), max_size=40))
    same(L.hmm_pfn_to_pfn_array, L.hmm_pfn_to_pfn, ws)
    same(L.hmm_pfn_to_map_order_array, L.hmm_pfn_to_map_order, ws)
    flag_bits = [v for _, v in L._named]
    items = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, (1 << L.pfn_bits) - 1),
                st.lists(st.sampled_from(flag_bits), max_size=3).map(lambda b: sum(set(b))),
            ),
            max_size=40,
        )
    )
    order = data.draw(st.integers(0, 0x1F))
    ps = np.array([p for p, _ in items], dtype=np.int64)
    fs = np.array([f for _, f in items], dtype=np.uint64)
    got = L.encode_array(ps, fs, order)
    assert got.tolist() == [L.encode(p, f, order) for p, f in items]


@pytest.mark.parametrize("i", range(len(HMM_LAYOUTS)))
def test_hmm_encode_array_refuses_what_encode_refuses(i):
    L = HMM_LAYOUTS[i]
    too_big = 1 << L.pfn_bits
    with pytest.raises(ValueError):
        L.encode(too_big)
    with pytest.raises(ValueError):
        L.encode_array(np.array([0, too_big]))
    in_order_field = 1 << L.HMM_PFN_ORDER_SHIFT
    with pytest.raises(ValueError):
        L.encode(0, in_order_field)
    with pytest.raises(ValueError):
        L.encode_array(np.array([0]), np.array([in_order_field], dtype=np.uint64))


# --- naming: every array form has its scalar twin ---------------------------------------------
@pytest.mark.parametrize("module", [pt, so, mig])
def test_every_array_form_has_a_scalar_form(module):
    names = {n for n, _ in inspect.getmembers(module)}
    names |= {n for n, _ in inspect.getmembers(so.SwapLayoutSeriesB612)}
    for n in names:
        if n.endswith("_array") and not n.startswith("_") and n != "words_array":
            scalar = n[: -len("_array")]
            assert scalar in names, f"{module.__name__}.{n} has no scalar form {scalar}"
