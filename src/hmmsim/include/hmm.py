"""HMM PFN words (enum hmm_pfn_flags) and struct hmm_range.

Models: include/linux/hmm.h (enum hmm_pfn_flags, hmm_pfn_to_map_order,
hmm_pfn_to_page's PFN mask, struct hmm_range, HMM_RANGE_DEFAULT_TIMEOUT) and
the private HMM_NEED_* / HMM_PFN_INOUT_FLAGS of mm/hmm.c @ torvalds/linux
0eaed89c18ae, plus two unmerged series from linux-mm:
(c) HMM_PFN_DEVICE_PRIVATE (Niethe, "Remove device private pages from
physical address space"; seed 003) and (e) HMM_PFN_MIGRATE,
HMM_PFN_COMPOUND, HMM_PFN_REQ_MIGRATE and hmm_range.migrate (Penttilä,
"Migrate on fault for device pages" v5; seed 002).

Flags sit in the top bits of a BITS_PER_LONG word and the PFN below
HMM_PFN_ORDER_SHIFT, so the layout depends on the configuration and is
computed by `HmmPfnLayout(cfg)`. Bit numbers, counted down from
BITS_PER_LONG (BPL = 64 -> bit 63 is BPL-1):

=================  ======  ======  ======  =======  =======
flag               pinned  (c)     (e)     c-first  e-first
=================  ======  ======  ======  =======  =======
VALID / WRITE      -1/-2   same    same    same     same
ERROR              -3      same    same    same     same
DMA_MAPPED         -4      same    same    same     same
P2PDMA/_BUS        -5/-6   same    same    same     same
DEVICE_PRIVATE     --      -7      --      -7       -9
MIGRATE            --      --      -7      -8       -7
COMPOUND           --      --      -8      -9       -8
ORDER_SHIFT        -11     -12     -13     -14      -14
=================  ======  ======  ======  =======  =======

(e) follows its v5 posting (seed 002): COMPOUND at BPL-8 pushes
ORDER_SHIFT to BPL-13 (the earlier RFC, without COMPOUND, used BPL-12).

Both (c) and (e) claim bit BPL-7, so KConfig refuses the pair unless a
``conflict_resolution`` is chosen. Our resolution (neither series defines
one): the series named first keeps its bits, the other series' flags take the
next free bits below, and the 5-bit map-order field moves down under all of
them: "c-first" keeps DEVICE_PRIVATE at BPL-7 and moves MIGRATE to BPL-8 and
COMPOUND to BPL-9; "e-first" keeps MIGRATE/COMPOUND at BPL-7/-8 and moves
DEVICE_PRIVATE to BPL-9. Either way ORDER_SHIFT becomes BPL-14, one PFN bit
fewer than either series alone.

Simplifications: a flag the configuration lacks is 0 in the layout (so
``x & L.HMM_PFN_MIGRATE`` is simply false), rather than a compile error.

Array forms: ``L.hmm_pfn_to_pfn_array``, ``L.hmm_pfn_to_map_order_array`` and
``L.encode_array`` are the element-wise twins for hmm_pfns arrays (np.uint64
words), built on the same layout fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from hmmsim.include.pgtable import I64Array, U64Array, words_array
from hmmsim.kconfig import PAGE_SHIFT

if TYPE_CHECKING:
    from hmmsim.kconfig import KConfig

#: Milliseconds a driver keeps retrying hmm_range_fault() on -EBUSY.
HMM_RANGE_DEFAULT_TIMEOUT = 1000

#: mm/hmm.c: what a page (or a range) still needs, per hmm_pte_need_fault().
HMM_NEED_FAULT = 1 << 0
HMM_NEED_WRITE_FAULT = 1 << 1
HMM_NEED_ALL_BITS = HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT

#: Width of the map-order field above HMM_PFN_ORDER_SHIFT (hmm_pfn_to_map_order
#: masks with 0x1F).
HMM_PFN_ORDER_BITS = 5

_FLAG_NAMES = (
    "HMM_PFN_VALID",
    "HMM_PFN_WRITE",
    "HMM_PFN_ERROR",
    "HMM_PFN_DMA_MAPPED",
    "HMM_PFN_P2PDMA",
    "HMM_PFN_P2PDMA_BUS",
    "HMM_PFN_DEVICE_PRIVATE",
    "HMM_PFN_MIGRATE",
    "HMM_PFN_COMPOUND",
)


class HmmPfnLayout:
    """The enum hmm_pfn_flags values for one configuration (see module docstring).

    Fields (kernel names): HMM_PFN_VALID, _WRITE, _ERROR, _DMA_MAPPED,
    _P2PDMA, _P2PDMA_BUS, _DEVICE_PRIVATE (c), _MIGRATE and _COMPOUND (e),
    HMM_PFN_ORDER_SHIFT, HMM_PFN_REQ_FAULT (= VALID), HMM_PFN_REQ_WRITE
    (= WRITE), HMM_PFN_REQ_MIGRATE (= MIGRATE, (e)), HMM_PFN_FLAGS (every bit
    from ORDER_SHIFT up), HMM_PFN_INOUT_FLAGS (the sticky DMA_MAPPED |
    P2PDMA | P2PDMA_BUS). Ours: bits_per_long, conflict_resolution, pfn_bits.

    Invariant: the flags are distinct single bits above the order field; the
    order field is the 5 bits from ORDER_SHIFT; the PFN is everything below.
    """

    def __init__(self, cfg: KConfig) -> None:
        bpl = cfg.bits_per_long
        self.bits_per_long = bpl
        self.conflict_resolution = None
        self._word_mask = (1 << bpl) - 1
        self.HMM_PFN_VALID = 1 << (bpl - 1)
        self.HMM_PFN_WRITE = 1 << (bpl - 2)
        self.HMM_PFN_ERROR = 1 << (bpl - 3)
        self.HMM_PFN_DMA_MAPPED = 1 << (bpl - 4)
        self.HMM_PFN_P2PDMA = 1 << (bpl - 5)
        self.HMM_PFN_P2PDMA_BUS = 1 << (bpl - 6)
        self.HMM_PFN_DEVICE_PRIVATE = 0
        self.HMM_PFN_MIGRATE = 0
        self.HMM_PFN_COMPOUND = 0
        c, e = cfg.has("c"), cfg.has("e")
        # distance below BITS_PER_LONG of each series flag, and of ORDER_SHIFT
        if c and e:
            self.conflict_resolution = cfg.conflict_resolution
            if cfg.conflict_resolution == "c-first":
                dp, mig, comp = 7, 8, 9
            elif cfg.conflict_resolution == "e-first":
                mig, comp, dp = 7, 8, 9
            else:
                raise ValueError(
                    "series (c) and (e) both claim HMM_PFN bit BITS_PER_LONG-7: "
                    "set KConfig.conflict_resolution to 'c-first' or 'e-first'"
                )
            self.HMM_PFN_DEVICE_PRIVATE = 1 << (bpl - dp)
            self.HMM_PFN_MIGRATE = 1 << (bpl - mig)
            self.HMM_PFN_COMPOUND = 1 << (bpl - comp)
            shift = bpl - 14
        elif c:
            self.HMM_PFN_DEVICE_PRIVATE = 1 << (bpl - 7)
            shift = bpl - 12
        elif e:
            self.HMM_PFN_MIGRATE = 1 << (bpl - 7)
            self.HMM_PFN_COMPOUND = 1 << (bpl - 8)
            shift = bpl - 13
        else:
            shift = bpl - 11
        self.HMM_PFN_ORDER_SHIFT = shift
        self.HMM_PFN_REQ_FAULT = self.HMM_PFN_VALID
        self.HMM_PFN_REQ_WRITE = self.HMM_PFN_WRITE
        self.HMM_PFN_REQ_MIGRATE = self.HMM_PFN_MIGRATE
        self.HMM_PFN_FLAGS = ~((1 << shift) - 1) & self._word_mask
        self.HMM_PFN_INOUT_FLAGS = (
            self.HMM_PFN_DMA_MAPPED | self.HMM_PFN_P2PDMA | self.HMM_PFN_P2PDMA_BUS
        )
        self._pfn_mask = (1 << shift) - 1
        self._order_mask = ((1 << HMM_PFN_ORDER_BITS) - 1) << shift
        self._named = tuple((n, getattr(self, n)) for n in _FLAG_NAMES if getattr(self, n))

    @property
    def pfn_bits(self) -> int:
        """How many bits the PFN field has (= HMM_PFN_ORDER_SHIFT)."""
        return self.HMM_PFN_ORDER_SHIFT

    def bit_positions(self) -> dict[str, int]:
        """{'HMM_PFN_VALID': 63, ...} for the flags this configuration has."""
        return {n: v.bit_length() - 1 for n, v in self._named}

    # --- include/linux/hmm.h -------------------------------------------------------------
    def hmm_pfn_to_map_order(self, hmm_pfn: int) -> int:
        """The CPU mapping order recorded in an output word (0, 9 for a PMD, ...).

        Kernel: include/linux/hmm.h hmm_pfn_to_map_order.
        """
        return (hmm_pfn >> self.HMM_PFN_ORDER_SHIFT) & 0x1F

    def hmm_pfn_to_pfn(self, hmm_pfn: int) -> int:
        """The PFN field, ``hmm_pfn & ~HMM_PFN_FLAGS`` (what hmm_pfn_to_page()
        feeds pfn_to_page(); with series (c) and HMM_PFN_DEVICE_PRIVATE set, a
        device-private offset)."""
        return hmm_pfn & self._pfn_mask

    def hmm_pfn_to_phys(self, hmm_pfn: int) -> int:
        return (hmm_pfn & self._pfn_mask) << PAGE_SHIFT

    def hmm_pfn_flags_order(self, order: int) -> int:
        """mm/hmm.c hmm_pfn_flags_order: `order` placed in the map-order field."""
        return order << self.HMM_PFN_ORDER_SHIFT

    # --- array forms --------------------------------------------------------------------
    def hmm_pfn_to_pfn_array(self, hmm_pfns: ArrayLike) -> I64Array:
        """Element-wise `hmm_pfn_to_pfn` (np.int64)."""
        return (words_array(hmm_pfns) & np.uint64(self._pfn_mask)).astype(np.int64)

    def hmm_pfn_to_map_order_array(self, hmm_pfns: ArrayLike) -> I64Array:
        """Element-wise `hmm_pfn_to_map_order` (np.int64)."""
        w = words_array(hmm_pfns) >> np.uint64(self.HMM_PFN_ORDER_SHIFT)
        return (w & np.uint64(0x1F)).astype(np.int64)

    def encode_array(self, pfns: ArrayLike, flags: ArrayLike = 0, order: int = 0) -> U64Array:
        """Element-wise `encode`: checked output words, np.uint64.

        `flags` is one value for every word or one per word; raises ValueError
        where the scalar form would for any element.
        """
        p = np.asarray(pfns, dtype=np.int64)
        f = words_array(flags)
        if ((p < 0) | ((p & ~self._pfn_mask) != 0)).any():
            raise ValueError(
                f"a PFN does not fit in the {self.HMM_PFN_ORDER_SHIFT} PFN bits of a "
                f"{self.bits_per_long}-bit HMM PFN"
            )
        if not 0 <= order <= 0x1F:
            raise ValueError(f"map order {order} does not fit the 5-bit order field")
        bad = np.uint64((~self.HMM_PFN_FLAGS | self._order_mask) & ((1 << 64) - 1))
        if ((f & bad) != 0).any():
            raise ValueError(
                "flags are not HMM_PFN_* flag bits of this layout "
                f"(allowed: {self.HMM_PFN_FLAGS & ~self._order_mask:#x})"
            )
        return p.astype(np.uint64) | f | np.uint64(order << self.HMM_PFN_ORDER_SHIFT)

    # --- ours ----------------------------------------------------------------------------
    def encode(self, pfn: int, flags: int = 0, order: int = 0) -> int:
        """An output word ``pfn | flags | order << ORDER_SHIFT``, checked.

        Raises ValueError when the PFN does not fit below the flag bits (the
        kernel would silently lose its top bits under the flags), when the
        order does not fit its 5 bits, or when `flags` has bits outside the
        flag area or inside the order field (pass the order separately).
        """
        if pfn < 0 or pfn & ~self._pfn_mask:
            raise ValueError(
                f"PFN {pfn:#x} does not fit in the {self.HMM_PFN_ORDER_SHIFT} PFN bits of a "
                f"{self.bits_per_long}-bit HMM PFN (flags start at bit "
                f"{self.HMM_PFN_ORDER_SHIFT}); use a 64-bit configuration or a smaller PFN"
            )
        if not 0 <= order <= 0x1F:
            raise ValueError(f"map order {order} does not fit the 5-bit order field")
        if flags & ~self.HMM_PFN_FLAGS or flags & self._order_mask or flags < 0:
            raise ValueError(
                f"flags {flags:#x} are not HMM_PFN_* flag bits of this layout "
                f"(allowed: {self.HMM_PFN_FLAGS & ~self._order_mask:#x})"
            )
        return pfn | flags | (order << self.HMM_PFN_ORDER_SHIFT)

    def describe(self, hmm_pfn: int) -> str:
        """'pfn=0x1234 order=9 VALID|WRITE' for traces."""
        names = "|".join(n[8:] for n, v in self._named if hmm_pfn & v) or "0"
        return (
            f"pfn={self.hmm_pfn_to_pfn(hmm_pfn):#x} order={self.hmm_pfn_to_map_order(hmm_pfn)}"
            f" {names}"
        )

    def __repr__(self) -> str:
        extra = f" {self.conflict_resolution}" if self.conflict_resolution else ""
        return (
            f"<HmmPfnLayout BPL={self.bits_per_long} ORDER_SHIFT={self.HMM_PFN_ORDER_SHIFT}"
            f" flags={self.HMM_PFN_FLAGS:#x}{extra}>"
        )


@dataclass(eq=False, slots=True)
class hmm_range:
    """struct hmm_range: one hmm_range_fault() request.

    Fields, in declared order:
        notifier: the mmu_interval_notifier covering [start, end); its mm is walked.
        notifier_seq: mmu_interval_read_begin() result, set before the call.
        start, end: the virtual range [start, end), page aligned.
        hmm_pfns: the caller's array, one word per page, input and output.
        default_flags: request flags applied to every page.
        pfn_flags_mask: which bits of each input word are honoured per page.
        dev_private_owner: device-private pages of this pgmap owner are
            reported (VALID, with (c) HMM_PFN_DEVICE_PRIVATE) instead of faulted.
        migrate: series (e) only, the struct migrate_vma the walk fills;
            must stay None without (e).

    Invariant: len(hmm_pfns) >= (end - start) >> PAGE_SHIFT.
    """

    notifier: object = None
    notifier_seq: int = 0
    start: int = 0
    end: int = 0
    hmm_pfns: object = None
    default_flags: int = 0
    pfn_flags_mask: int = 0
    dev_private_owner: object = None
    migrate: object = None

    def __repr__(self) -> str:
        return (
            f"<hmm_range [{self.start:#x}, {self.end:#x}) default={self.default_flags:#x} "
            f"mask={self.pfn_flags_mask:#x} seq={self.notifier_seq} "
            f"owner={self.dev_private_owner!r}{' migrate' if self.migrate else ''}>"
        )
