"""HMM PFN encodings and struct hmm_range.

Models: include/linux/hmm.h (enum hmm_pfn_flags, hmm_pfn_to_map_order,
struct hmm_range, HMM_RANGE_DEFAULT_TIMEOUT) @ torvalds/linux 0eaed89c18ae,
with the unmerged series (c) (HMM_PFN_DEVICE_PRIVATE) and (e)
(HMM_PFN_MIGRATE / HMM_PFN_COMPOUND / HMM_PFN_REQ_MIGRATE) from the linux-mm
review threads in shared/seeds/003 and 002.

Flags live in the top bits of a BITS_PER_LONG word, so the layout depends on
the configuration: `HmmPfnLayout(cfg)` computes it.

- pinned tag: VALID BPL-1, WRITE BPL-2, ERROR BPL-3, DMA_MAPPED BPL-4,
  P2PDMA BPL-5, P2PDMA_BUS BPL-6, ORDER_SHIFT BPL-11 (5-bit order field).
- (c): DEVICE_PRIVATE = BPL-7, ORDER_SHIFT = BPL-12.
- (e): MIGRATE = BPL-7, COMPOUND = BPL-8, ORDER_SHIFT = BPL-13.
- (c)+(e) clash on BPL-7 and on ORDER_SHIFT. KConfig refuses the pair
  unless conflict_resolution is given: "c-first" keeps DEVICE_PRIVATE at
  BPL-7 and moves MIGRATE to BPL-8, COMPOUND to BPL-9; "e-first" keeps
  MIGRATE/COMPOUND at BPL-7/-8 and moves DEVICE_PRIVATE to BPL-9. Either way
  ORDER_SHIFT becomes BPL-14, leaving one bit fewer for the PFN.
"""

from __future__ import annotations

from dataclasses import dataclass

#: milliseconds a driver retries hmm_range_fault on -EBUSY
HMM_RANGE_DEFAULT_TIMEOUT = 1000


class HmmPfnLayout:
    """The HMM_PFN_* values for one configuration (see module docstring).

    Attributes named exactly like the kernel's enum members; a member a
    configuration does not have is 0 (never set in any output).
    """

    def __init__(self, cfg) -> None:
        bpl = cfg.bits_per_long
        self.bits_per_long = bpl
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
        shift = bpl - 11
        if c and e:
            if cfg.conflict_resolution == "c-first":
                dp, mig, comp = 7, 8, 9
            else:
                mig, comp, dp = 7, 8, 9
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
        self.HMM_PFN_ORDER_SHIFT = shift
        self.HMM_PFN_REQ_FAULT = self.HMM_PFN_VALID
        self.HMM_PFN_REQ_WRITE = self.HMM_PFN_WRITE
        self.HMM_PFN_REQ_MIGRATE = self.HMM_PFN_MIGRATE
        mask = (1 << bpl) - 1
        self.HMM_PFN_FLAGS = ~((1 << shift) - 1) & mask
        self.HMM_PFN_INOUT_FLAGS = (
            self.HMM_PFN_DMA_MAPPED | self.HMM_PFN_P2PDMA | self.HMM_PFN_P2PDMA_BUS
        )

    @property
    def pfn_bits(self) -> int:
        return self.HMM_PFN_ORDER_SHIFT

    def hmm_pfn_to_map_order(self, hmm_pfn: int) -> int:
        return (hmm_pfn >> self.HMM_PFN_ORDER_SHIFT) & 0x1F

    def hmm_pfn_to_pfn(self, hmm_pfn: int) -> int:
        """The PFN (or (c) device-private offset) field of an output word."""
        return hmm_pfn & ~self.HMM_PFN_FLAGS & ((1 << self.bits_per_long) - 1)

    def encode(self, pfn: int, flags: int = 0, order: int = 0) -> int:
        """An output word; ValueError if pfn does not fit below the flags."""
        if pfn < 0 or pfn >> self.HMM_PFN_ORDER_SHIFT:
            raise ValueError(
                f"PFN {pfn:#x} does not fit in the {self.HMM_PFN_ORDER_SHIFT} PFN bits of a "
                f"{self.bits_per_long}-bit HMM PFN"
            )
        if order < 0 or order > 0x1F:
            raise ValueError(f"map order {order} does not fit the 5-bit order field")
        return pfn | flags | (order << self.HMM_PFN_ORDER_SHIFT)

    def describe(self, hmm_pfn: int) -> str:
        names = [
            n[8:]
            for n in (
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
            if getattr(self, n) and hmm_pfn & getattr(self, n)
        ]
        return (
            f"pfn={self.hmm_pfn_to_pfn(hmm_pfn):#x} order={self.hmm_pfn_to_map_order(hmm_pfn)}"
            f" {'|'.join(names) or '0'}"
        )

    def __repr__(self) -> str:
        return f"<HmmPfnLayout BPL={self.bits_per_long} ORDER_SHIFT={self.HMM_PFN_ORDER_SHIFT}>"


@dataclass(eq=False)
class hmm_range:
    """struct hmm_range: notifier, notifier_seq, start, end, hmm_pfns (caller's
    array, in/out), default_flags, pfn_flags_mask, dev_private_owner; series
    (e) adds migrate (a struct migrate_vma to fill while walking)."""

    notifier: object = None
    notifier_seq: int = 0
    start: int = 0
    end: int = 0
    hmm_pfns: object = None
    default_flags: int = 0
    pfn_flags_mask: int = 0
    dev_private_owner: object = None
    migrate: object = None
