"""Fault injection: fail the Nth hit of a named site, like the kernel's fail-nth.

Models: lib/fault-inject.c and Documentation/fault-injection (the per-task
`fail-nth` knob, failslab / fail_page_alloc) @ torvalds/linux 0eaed89c18ae,
extended with the failures a device driver sees.

Sites (each a call of `should_fail(k, site)` where the failure can happen):
- "alloc_pages": a system page allocation returns NULL (fail_page_alloc);
- "device_alloc": the dmirror driver cannot get a device page;
- "copy": the dmirror driver's copy of a page fails (a DMA error); the
  driver then leaves that destination slot empty, as the migrate API asks;
- "pin": a racing get_user_pages takes an extra reference on a page that
  migrate_device_unmap is about to check (the pin is held to the end of the
  operation);
- "invalidate": an unrelated mmu-notifier invalidation of the operation's
  range runs while the operation holds no lock but the mmap_lock (what
  reclaim, NUMA balancing or khugepaged may do at any time).

`Kernel.fault_inject` is None normally and costs one attribute test per
site. Nothing here decides what a failure does: every site's caller handles
it as the kernel (or the driver) does.
"""

from __future__ import annotations

from collections import Counter

SITES = ("alloc_pages", "device_alloc", "copy", "pin", "invalidate")


class FaultInjector:
    """Count hits of the armed sites; fail the `nth` one (1-based), or none."""

    def __init__(self, sites, nth: int | None = None) -> None:
        unknown = set(sites) - set(SITES)
        if unknown:
            raise ValueError(f"unknown fault-injection site {sorted(unknown)}: choose from {SITES}")
        self.sites = frozenset(sites)
        self.nth = nth
        self.count = 0
        self.hits: Counter = Counter()
        self.fired: str | None = None
        self.pins: list = []  # folios given an injected extra reference
        self.range: tuple | None = None  # (mm, start, end) for "invalidate"

    def hit(self, site: str) -> bool:
        if site not in self.sites:
            return False
        self.count += 1
        self.hits[site] += 1
        if self.count == self.nth:
            self.fired = site
            return True
        return False


def should_fail(k, site: str) -> bool:
    """True when the armed injector wants this hit of `site` to fail."""
    fi = k.fault_inject
    return fi is not None and fi.hit(site)


def inject_pin(k, folio) -> None:
    """Site "pin": a racing GUP takes a reference (dropped by `release_pins`)."""
    from hmmsim.include.mm_types import folio_get

    if should_fail(k, "pin"):
        folio_get(folio)
        k.fault_inject.pins.append(folio)


def release_pins(k) -> None:
    from hmmsim.include.mm_types import folio_put

    fi = k.fault_inject
    while fi is not None and fi.pins:
        folio_put(fi.pins.pop())


def maybe_invalidate(k) -> None:
    """Site "invalidate": called at scheduler points; fires only lock-free."""
    fi = k.fault_inject
    if fi is None or fi.range is None or "invalidate" not in fi.sites:
        return
    mm, start, end = fi.range
    if any(lock is not mm.mmap_lock for lock in k.held_locks):
        return
    if should_fail(k, "invalidate"):
        from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
        from hmmsim.mm.mmu_notifier import notify_range

        saved, fi.range = fi.range, None  # no injection from inside the injection
        try:
            with notify_range(mm, MMU_NOTIFY_CLEAR, start, end):
                pass
        finally:
            fi.range = saved
