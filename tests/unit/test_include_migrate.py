"""include/migrate.py: migrate-PFN words, MIGRATE_VMA_SELECT_*, struct migrate_vma.

Values from include/linux/migrate.h at the pin; MIGRATE_PFN_DEVICE_PRIVATE
(bit 5) from series (a) v2+.
"""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_FLAGS_MASK,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_SHIFT,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    describe_migrate_pfn,
    describe_select_flags,
    migrate_pfn,
    migrate_pfn_check,
    migrate_pfn_to_pfn,
    migrate_vma,
    migrate_vma_direction,
)


def test_flag_values():
    assert MIGRATE_PFN_VALID == 0x01
    assert MIGRATE_PFN_MIGRATE == 0x02
    assert MIGRATE_PFN_WRITE == 0x08  # bit 2 (the old LOCKED) stays free
    assert MIGRATE_PFN_COMPOUND == 0x10
    assert MIGRATE_PFN_DEVICE_PRIVATE == 0x20  # series (a)
    assert MIGRATE_PFN_SHIFT == 6 and MIGRATE_PFN_FLAGS_MASK == 0x3F


def test_select_values():
    assert (
        MIGRATE_VMA_SELECT_SYSTEM,
        MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
        MIGRATE_VMA_SELECT_DEVICE_COHERENT,
        MIGRATE_VMA_SELECT_COMPOUND,
    ) == (1, 2, 4, 8)
    assert [m.name for m in migrate_vma_direction] == [
        "MIGRATE_VMA_SELECT_SYSTEM",
        "MIGRATE_VMA_SELECT_DEVICE_PRIVATE",
        "MIGRATE_VMA_SELECT_DEVICE_COHERENT",
        "MIGRATE_VMA_SELECT_COMPOUND",
    ]
    assert type(MIGRATE_VMA_SELECT_SYSTEM) is int


def test_migrate_pfn():
    assert migrate_pfn(0x1234) == 0x4_8D01  # 0x1234 << 6 | VALID
    assert migrate_pfn(0) == MIGRATE_PFN_VALID
    assert migrate_pfn_to_pfn(0x4_8D01 | MIGRATE_PFN_WRITE | MIGRATE_PFN_MIGRATE) == 0x1234


@given(pfn=st.integers(0, (1 << 58) - 1), flags=st.integers(0, 0x3F))
def test_round_trip(pfn, flags):
    v = migrate_pfn(pfn) | flags
    assert migrate_pfn_to_pfn(v) == pfn
    assert v & MIGRATE_PFN_VALID and v & MIGRATE_PFN_FLAGS_MASK == flags | MIGRATE_PFN_VALID
    assert migrate_pfn_check(pfn) == pfn


def test_pfn_budget_per_word_size():
    assert migrate_pfn_check((1 << 26) - 1, 32) == (1 << 26) - 1
    with pytest.raises(ValueError, match="32-bit migrate PFN .26 bits"):
        migrate_pfn_check(1 << 26, 32)
    with pytest.raises(ValueError, match="64-bit migrate PFN .58 bits"):
        migrate_pfn_check(1 << 58)
    with pytest.raises(ValueError):
        migrate_pfn_check(-1)


def test_describe():
    v = migrate_pfn(0x1234) | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE
    assert describe_migrate_pfn(v) == "pfn=0x1234 VALID|MIGRATE|WRITE"
    assert describe_migrate_pfn(MIGRATE_PFN_MIGRATE) == "MIGRATE"  # a hole
    assert describe_migrate_pfn(0) == "0"
    dp = migrate_pfn(5) | MIGRATE_PFN_COMPOUND | MIGRATE_PFN_DEVICE_PRIVATE
    assert describe_migrate_pfn(dp) == "pfn=0x5 VALID|COMPOUND|DEVICE_PRIVATE"
    assert describe_migrate_pfn(0x5 << 6) == "0 stale-pfn=0x5"
    assert describe_select_flags(9) == "SYSTEM|COMPOUND"
    assert describe_select_flags(0x12) == "DEVICE_PRIVATE|0x10"
    assert describe_select_flags(0) == "0"


def test_migrate_vma_fields_in_kernel_order():
    assert [f.name for f in dataclasses.fields(migrate_vma)] == [
        "vma",
        "dst",
        "src",
        "cpages",
        "npages",
        "start",
        "end",
        "pgmap_owner",
        "flags",
        "fault_page",
    ]
    m = migrate_vma(start=0x1000, end=0x3000, flags=MIGRATE_VMA_SELECT_SYSTEM)
    assert (m.cpages, m.npages, m.fault_page) == (0, 0, None)
    assert repr(m) == "<migrate_vma [0x1000, 0x3000) npages=0 cpages=0 select=SYSTEM owner=None>"
