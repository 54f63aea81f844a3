"""include/hmm.py: HMM PFN layouts for 64/32-bit and series (c), (e), (c)+(e).

Expected positions: include/linux/hmm.h (enum hmm_pfn_flags) at the pin and
the series postings (c: DEVICE_PRIVATE = BPL-7, ORDER_SHIFT = BPL-12; e v5:
MIGRATE = BPL-7, COMPOUND = BPL-8, ORDER_SHIFT = BPL-13).
"""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmmsim.include.hmm import (
    HMM_NEED_ALL_BITS,
    HMM_NEED_FAULT,
    HMM_NEED_WRITE_FAULT,
    HMM_RANGE_DEFAULT_TIMEOUT,
    HmmPfnLayout,
    hmm_range,
)
from hmmsim.kconfig import ConfigError, KConfig


def layout(features="d", bpl=64, resolution=None):
    return HmmPfnLayout(
        KConfig(features=frozenset(features), bits_per_long=bpl, conflict_resolution=resolution)
    )


PIN64 = layout()
PIN32 = layout(bpl=32)
C64 = layout("abcd")
E64 = layout("de")
CF64 = layout("abcde", resolution="c-first")
EF64 = layout("abcde", resolution="e-first")
ALL = {
    "pin64": PIN64,
    "pin32": PIN32,
    "c64": C64,
    "c32": layout("abcd", 32),
    "e64": E64,
    "e32": layout("de", 32),
    "cfirst64": CF64,
    "efirst64": EF64,
    "cfirst32": layout("abcde", 32, "c-first"),
    "efirst32": layout("abcde", 32, "e-first"),
}


def test_private_constants():
    assert (HMM_NEED_FAULT, HMM_NEED_WRITE_FAULT, HMM_NEED_ALL_BITS) == (1, 2, 3)
    assert HMM_RANGE_DEFAULT_TIMEOUT == 1000


def test_pinned_64bit_layout():
    L = PIN64
    assert L.HMM_PFN_VALID == 0x8000_0000_0000_0000
    assert L.HMM_PFN_WRITE == 0x4000_0000_0000_0000
    assert L.HMM_PFN_ERROR == 0x2000_0000_0000_0000
    assert L.HMM_PFN_DMA_MAPPED == 0x1000_0000_0000_0000
    assert L.HMM_PFN_P2PDMA == 0x0800_0000_0000_0000
    assert L.HMM_PFN_P2PDMA_BUS == 0x0400_0000_0000_0000
    assert L.HMM_PFN_ORDER_SHIFT == 53
    assert L.HMM_PFN_FLAGS == 0xFFE0_0000_0000_0000
    assert L.HMM_PFN_REQ_FAULT == L.HMM_PFN_VALID and L.HMM_PFN_REQ_WRITE == L.HMM_PFN_WRITE
    assert L.HMM_PFN_INOUT_FLAGS == 0x1C00_0000_0000_0000
    assert (L.HMM_PFN_DEVICE_PRIVATE, L.HMM_PFN_MIGRATE, L.HMM_PFN_COMPOUND) == (0, 0, 0)
    assert L.HMM_PFN_REQ_MIGRATE == 0 and L.conflict_resolution is None


def test_pinned_32bit_layout():
    L = PIN32
    assert L.bit_positions() == {
        "HMM_PFN_VALID": 31,
        "HMM_PFN_WRITE": 30,
        "HMM_PFN_ERROR": 29,
        "HMM_PFN_DMA_MAPPED": 28,
        "HMM_PFN_P2PDMA": 27,
        "HMM_PFN_P2PDMA_BUS": 26,
    }
    assert L.HMM_PFN_ORDER_SHIFT == 21 and L.pfn_bits == 21
    assert L.HMM_PFN_FLAGS == 0xFFE0_0000
    assert L.HMM_PFN_INOUT_FLAGS == 0x1C00_0000


def test_series_c_layout():
    assert C64.HMM_PFN_DEVICE_PRIVATE == 1 << 57
    assert C64.HMM_PFN_ORDER_SHIFT == 52 and C64.HMM_PFN_FLAGS == 0xFFF0_0000_0000_0000
    assert C64.HMM_PFN_MIGRATE == 0
    c32 = ALL["c32"]
    assert c32.HMM_PFN_DEVICE_PRIVATE == 1 << 25 and c32.HMM_PFN_ORDER_SHIFT == 20


def test_series_e_layout():
    assert E64.HMM_PFN_MIGRATE == 1 << 57 == E64.HMM_PFN_REQ_MIGRATE
    assert E64.HMM_PFN_COMPOUND == 1 << 56
    assert E64.HMM_PFN_ORDER_SHIFT == 51 and E64.HMM_PFN_DEVICE_PRIVATE == 0
    e32 = ALL["e32"]
    assert (e32.HMM_PFN_MIGRATE, e32.HMM_PFN_COMPOUND, e32.HMM_PFN_ORDER_SHIFT) == (
        1 << 25,
        1 << 24,
        19,
    )


def test_c_and_e_resolutions():
    assert CF64.conflict_resolution == "c-first"
    assert CF64.bit_positions()["HMM_PFN_DEVICE_PRIVATE"] == 57
    assert CF64.bit_positions()["HMM_PFN_MIGRATE"] == 56
    assert CF64.bit_positions()["HMM_PFN_COMPOUND"] == 55
    assert EF64.bit_positions()["HMM_PFN_MIGRATE"] == 57
    assert EF64.bit_positions()["HMM_PFN_COMPOUND"] == 56
    assert EF64.bit_positions()["HMM_PFN_DEVICE_PRIVATE"] == 55
    assert CF64.HMM_PFN_ORDER_SHIFT == EF64.HMM_PFN_ORDER_SHIFT == 50
    assert ALL["cfirst32"].HMM_PFN_ORDER_SHIFT == 18
    assert ALL["efirst32"].HMM_PFN_DEVICE_PRIVATE == 1 << 23
    assert CF64.HMM_PFN_REQ_MIGRATE == CF64.HMM_PFN_MIGRATE == 1 << 56


def test_c_and_e_need_a_resolution():
    with pytest.raises(ConfigError, match="conflict_resolution"):
        KConfig(features=frozenset("abcde"))


@pytest.mark.parametrize("name", sorted(ALL))
def test_layout_invariants(name):
    L = ALL[name]
    bits = L.bit_positions()
    assert len(set(bits.values())) == len(bits)  # distinct single bits
    assert min(bits.values()) == L.HMM_PFN_ORDER_SHIFT + 5  # no gap, no overlap with order
    assert max(bits.values()) == L.bits_per_long - 1
    assert L.HMM_PFN_FLAGS == ((1 << L.bits_per_long) - 1) ^ ((1 << L.HMM_PFN_ORDER_SHIFT) - 1)
    for v in bits.values():
        assert (1 << v) & L.HMM_PFN_FLAGS


def test_map_order_and_pfn():
    L = PIN64
    word = L.HMM_PFN_VALID | L.HMM_PFN_WRITE | (9 << 53) | 0x12_3400
    assert L.hmm_pfn_to_map_order(word) == 9
    assert L.hmm_pfn_to_pfn(word) == 0x12_3400
    assert L.hmm_pfn_to_phys(word) == 0x12_3400 << 12
    assert L.hmm_pfn_flags_order(18) == 18 << 53
    assert L.encode(0x12_3400, L.HMM_PFN_VALID | L.HMM_PFN_WRITE, 9) == word
    assert L.describe(word) == "pfn=0x123400 order=9 VALID|WRITE"
    assert L.describe(0) == "pfn=0x0 order=0 0"
    # order 18 (PUD) fits the 5-bit field next to flags
    assert C64.hmm_pfn_to_map_order(C64.encode(1, C64.HMM_PFN_DEVICE_PRIVATE, 18)) == 18


def test_pfn_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="does not fit in the 53 PFN bits"):
        PIN64.encode(1 << 53)
    assert PIN64.encode((1 << 53) - 1) == (1 << 53) - 1
    # 32-bit: 21 PFN bits, i.e. nothing at or above 8 GiB
    with pytest.raises(ValueError, match="21 PFN bits of a 32-bit HMM PFN"):
        PIN32.encode(1 << 21, PIN32.HMM_PFN_VALID)
    assert PIN32.encode((1 << 21) - 1, PIN32.HMM_PFN_VALID) == 0x801F_FFFF
    with pytest.raises(ValueError, match="18 PFN bits"):
        ALL["efirst32"].encode(1 << 18)
    with pytest.raises(ValueError):
        PIN64.encode(-1)


def test_encode_rejects_bad_orders_and_flags():
    with pytest.raises(ValueError, match="5-bit order field"):
        PIN64.encode(1, order=32)
    with pytest.raises(ValueError, match="not HMM_PFN_"):
        PIN64.encode(1, flags=1)  # a PFN bit
    with pytest.raises(ValueError, match="not HMM_PFN_"):
        PIN64.encode(1, flags=9 << 53)  # the order must go through `order`
    with pytest.raises(ValueError, match="not HMM_PFN_"):
        PIN32.encode(1, flags=1 << 40)  # beyond a 32-bit word


@pytest.mark.parametrize("name", sorted(ALL))
@given(data=st.data())
def test_encode_round_trip(name, data):
    L = ALL[name]
    pfn = data.draw(st.integers(0, (1 << L.pfn_bits) - 1))
    order = data.draw(st.integers(0, 31))
    flags = 0
    for v in L.bit_positions().values():
        if data.draw(st.booleans()):
            flags |= 1 << v
    w = L.encode(pfn, flags, order)
    assert w < 1 << L.bits_per_long
    assert L.hmm_pfn_to_pfn(w) == pfn and L.hmm_pfn_to_map_order(w) == order
    assert w & L.HMM_PFN_FLAGS == flags | (order << L.HMM_PFN_ORDER_SHIFT)


def test_hmm_range_fields_in_kernel_order():
    names = [f.name for f in dataclasses.fields(hmm_range)]
    assert names == [
        "notifier",
        "notifier_seq",
        "start",
        "end",
        "hmm_pfns",
        "default_flags",
        "pfn_flags_mask",
        "dev_private_owner",
        "migrate",  # series (e)
    ]
    r = hmm_range(start=0x1000, end=0x3000, default_flags=PIN64.HMM_PFN_REQ_FAULT)
    assert repr(r) == (
        "<hmm_range [0x1000, 0x3000) default=0x8000000000000000 mask=0x0 seq=0 owner=None>"
    )


def test_repr():
    assert repr(PIN64) == "<HmmPfnLayout BPL=64 ORDER_SHIFT=53 flags=0xffe0000000000000>"
    assert repr(CF64).endswith(" c-first>")
