"""The invariant checker: recompute what the metadata must say, and compare.

Callable after any operation (tests call it after every step). It walks every
live address space's page tables and the allocator, recomputes mapcounts,
reference counts and rss counters from first principles, and reports every
disagreement. Nothing here is kernel code; the rules are the kernel's
(mm/debug.c's dump_page checks, mm/page_alloc.c's bad_page, rmap.h's
mapcount scheme) @ torvalds/linux 0eaed89c18ae.

Checked:
- no lock is held (the checker runs between syscalls);
- every free RAM page carries PGTY_buddy (or, on a pcp list, not), refcount
  0, mapcount -1, and PhysMem.nr_free matches the buddy and pcp lists;
- PhysMem.buddy_orders names the order at each free buddy block's head
  page and -1 everywhere else;
- every entry decodes: present entries name an allocated page (never a
  free one), software leaf entries have a known type and name a page;
- vmas are sorted, disjoint, page aligned, and no entry maps outside a vma;
- each page's _mapcount, each folio's _entire_mapcount and _large_mapcount
  equal the PTE/PMD mappings found (device-private and device-exclusive
  entries count as mappings, migration entries do not);
- each folio's refcount equals its mappings plus page-cache, page-table,
  pin and registered extra references (exact, so a leak is caught);
- each mm's rss counters equal the pages found;
- every anon page is reachable through rmap from each vma that maps it;
- each huge PMD has exactly one deposited page table;
- every device mirror (a notifier subscriber with a `pt`) maps only pages
  the CPU maps at the same address, writable only where the CPU allows it;
- no page is locked (PG_locked) and no migration entry is left in a page
  table between operations (migrate_vma_finalize removes them all);
- every page-table page is referenced by exactly one entry or deposit (a
  table nobody points to has leaked);
- no present PTE or PMD maps a device-private page (its index is not a
  physical PFN; only device-private entries may name it);
- interval-notifier sequences only grow (checked against the values seen
  by the previous check of the same Kernel);
- drivers' hooks (`k.invariant_hooks`) add their own: dmirror checks that
  every device page is either free in the driver or referenced.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.include.mm import VM_HUGETLB
from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    MM_ANONPAGES,
    MM_FILEPAGES,
    MM_SHMEMPAGES,
    PG_head,
    PG_hugetlb,
    PG_reserved,
    PG_zero,
    PGTY_buddy,
    PGTY_table,
)
from hmmsim.include.pgtable import (
    PTE_PFN_MASK,
    pmd_leaf,
    pmd_pfn,
    pmd_present,
    pte_pfn,
    pte_pfn_array,
    pte_present,
    pte_present_array,
    pte_special,
    pte_special_array,
)
from hmmsim.kconfig import HPAGE_PMD_NR, PAGE_SHIFT, PGDIR_SHIFT, PMD_SHIFT, PUD_SHIFT
from hmmsim.mm.gup import GUP_PIN_COUNTING_BIAS

#: every PTE bit but Accessed and Dirty (an entry with only those is pte_none here)
_NOT_AD = np.uint64(~0x60 & 0xFFFF_FFFF_FFFF_FFFF)


class InvariantViolation(KernelBug):
    """One or more invariants do not hold; .problems lists them all."""

    def __init__(self, problems: list[str]) -> None:
        head = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} invariant violation(s):\n  {head}{more}")
        self.problems = problems


def check_bytes(proc, base: int, shadow) -> None:
    """The data oracle of the API fuzzers: the process reads back at base
    exactly the int32 words of `shadow`, or AssertionError names the first
    word that differs."""
    import numpy as np

    got = proc.load_array(base, shadow.size)
    if not (got == shadow).all():
        w = int(np.nonzero(got != shadow)[0][0])
        raise AssertionError(f"byte lost: word {w} at {base:#x}: {got[w]} != {shadow[w]}")


def check_invariants(k, *, raise_on_error: bool = True) -> list[str]:
    """Check every invariant of Kernel k; raise InvariantViolation (or return problems)."""
    c = _Checker(k)
    c.run()
    if c.problems and raise_on_error:
        raise InvariantViolation(c.problems)
    return c.problems


class _Checker:
    def __init__(self, k) -> None:
        self.k = k
        self.problems: list[str] = []
        self.pte_maps: Counter = Counter()  # pfn -> PTE-level mappings
        self.pmd_maps: Counter = Counter()  # head pfn -> PMD-level mappings
        self.refs: Counter = Counter()  # head pfn -> references found
        self.tables: Counter = Counter()  # table pfn -> times referenced
        self.huge_pmds: set[int] = set()
        self.migrating: set[int] = set()
        # the PTE walk's bulk part, per memory range (id): the mapped pages'
        # and their heads' indices in the range, one array per table (counted
        # with pte_maps and refs in check_counts)
        self.bulk: dict[int, tuple[list, list]] = {}
        self.pcp_arr: np.ndarray | None = None
        self.pcp_mask: np.ndarray | None = None

    def bad(self, msg: str) -> None:
        self.problems.append(msg)

    def run(self) -> None:
        k = self.k
        if k.held_locks:
            self.bad(f"locks held between operations: {sorted(map(repr, k.held_locks))}")
        self.check_buddy()
        for p in list(k.processes.values()):
            if p.alive:
                self.check_mm(p.mm)
        self.check_deposits()
        self.check_counts()
        for p in list(k.processes.values()):
            if p.alive:
                self.check_mirrors(p)
                self.check_notifier_seqs(p)
        self.check_at_rest()
        self.check_token_plane()
        for hook in getattr(k, "invariant_hooks", ()):
            self.problems.extend(hook(k))

    # --- allocator --------------------------------------------------------------------------
    def check_buddy(self) -> None:
        mem = self.k.mem
        p = mem.ram.pages
        in_lists = self._free_lists_mask(mem, p.nr)
        if in_lists is None:
            in_lists = self._free_lists_mask_slow(mem, p.nr)
        buddy = (p.flags & PGTY_buddy) != 0
        if (buddy != in_lists).any():
            pfn = int(np.nonzero(buddy != in_lists)[0][0])
            self.bad(f"pfn {pfn:#x}: PGTY_buddy disagrees with the free lists")
        pcp = mem.pcp_pfns()  # pages on the per-cpu lists: free, not PageBuddy
        self.pcp_free = set(pcp.tolist())
        self.pcp_arr = np.unique(pcp)
        if len(pcp) and 0 <= int(self.pcp_arr[0]) and int(self.pcp_arr[-1]) < p.nr:
            self.pcp_mask = np.zeros(p.nr, dtype=bool)  # pcp_arr as a per-page mask
            self.pcp_mask[self.pcp_arr] = True
        if len(pcp) != mem.pcp.count:
            self.bad(f"pcp count {mem.pcp.count} but {len(pcp)} pages on the pcp lists")
        if len(pcp) and (in_lists[pcp].any() or len(np.unique(pcp)) != len(pcp)):
            self.bad("a pcp page is on the buddy lists or on the pcp lists twice")
        if int(in_lists.sum()) + len(pcp) != mem.nr_free:
            self.bad(
                f"nr_free {mem.nr_free} but {int(in_lists.sum())} pages on the free lists "
                f"and {len(pcp)} on the pcp lists"
            )
        if (p._refcount[in_lists] != 0).any() or (p._mapcount[in_lists] != -1).any():
            self.bad("a free page has a reference or a mapping")
        if len(pcp) and ((p._refcount[pcp] != 0).any() or (p._mapcount[pcp] != -1).any()):
            self.bad("a pcp page has a reference or a mapping")
        self.check_buddy_orders(mem, p.nr)

    #: At most this many pages are named when PhysMem.buddy_orders disagrees.
    BUDDY_ORDER_SHOWN = 8

    def check_buddy_orders(self, mem, nr: int) -> None:
        """PhysMem.buddy_orders against the free lists, as arrays: the head
        page of each free buddy block carries the block's order (the
        kernel's buddy_order of a PageBuddy head, set by set_buddy_order in
        mm/page_alloc.c), every other RAM page -1. Mismatches are named in
        PFN order (the first BUDDY_ORDER_SHOWN, then a count). Blocks outside
        RAM are left to check_buddy's coverage report; a head on two lists
        expects the higher order (the overlap is reported there too)."""
        got = getattr(mem, "buddy_orders", None)
        if not isinstance(got, np.ndarray) or got.shape != (nr,):
            shape = None if got is None else getattr(got, "shape", type(got).__name__)
            self.bad(f"buddy_orders is {shape}, not one order per RAM page ({nr})")
            return
        want = np.full(nr, -1, dtype=np.int16)
        for order, blocks in enumerate(mem.free_area):
            if blocks:
                b = np.fromiter(blocks, dtype=np.int64)
                want[b[(b >= 0) & (b < nr)]] = order
        off = np.nonzero(got.astype(np.int16) != want)[0]
        for pfn in off[: self.BUDDY_ORDER_SHOWN].tolist():
            w, g = int(want[pfn]), int(got[pfn])
            if w < 0:
                self.bad(f"pfn {pfn:#x}: buddy_orders {g} but no free block starts there")
            elif g < 0:
                self.bad(f"pfn {pfn:#x}: free block of order {w} but buddy_orders -1")
            else:
                self.bad(f"pfn {pfn:#x}: free block of order {w} but buddy_orders {g}")
        if len(off) > self.BUDDY_ORDER_SHOWN:
            self.bad(f"buddy_orders disagrees with the free lists at {len(off)} pages")

    def _free_lists_mask_slow(self, mem, nr: int) -> np.ndarray:
        """The pages on the buddy lists, block by block: misaligned and
        overlapping blocks are reported in list order (the specification of
        _free_lists_mask)."""
        in_lists = np.zeros(nr, dtype=bool)
        for order, blocks in enumerate(mem.free_area):
            for pfn in blocks:
                if pfn % (1 << order):
                    self.bad(f"free block {pfn:#x} of order {order} is misaligned")
                if in_lists[pfn : pfn + (1 << order)].any():
                    self.bad(f"free block {pfn:#x} overlaps another free block")
                in_lists[pfn : pfn + (1 << order)] = True
        return in_lists

    @staticmethod
    def _free_lists_mask(mem, nr: int) -> np.ndarray | None:
        """_free_lists_mask_slow() as arrays: a coverage count per page from
        the blocks' starts and ends. None when a block is misaligned,
        overlaps another or lies outside RAM (the slow form then reports
        those exactly, in list order)."""
        starts, sizes = [], []
        for order, blocks in enumerate(mem.free_area):
            if blocks:
                b = np.fromiter(blocks, dtype=np.int64)
                starts.append(b)
                sizes.append(np.full(len(b), 1 << order, dtype=np.int64))
        if not starts:
            return np.zeros(nr, dtype=bool)
        st = np.concatenate(starts)
        ends = st + np.concatenate(sizes)
        if int(st.min()) < 0 or int(ends.max()) > nr or ((st & (ends - st - 1)) != 0).any():
            return None
        edges = np.bincount(st, minlength=nr + 1) - np.bincount(ends, minlength=nr + 1)
        cover = np.cumsum(edges[:nr])
        if (cover > 1).any():
            return None
        return cover == 1

    # --- page tables ------------------------------------------------------------------------
    def check_mm(self, mm) -> None:
        k = self.k
        prev_end = 0
        for vma in mm.vmas:
            if vma.vm_start >= vma.vm_end or (vma.vm_start | vma.vm_end) & 0xFFF:
                self.bad(f"bad vma bounds {vma!r}")
            if vma.vm_start < prev_end:
                self.bad(f"vmas overlap or are unsorted at {vma!r}")
            prev_end = vma.vm_end
        self.rss = [0, 0, 0, 0]
        self.tables[mm.pgd] += 1
        words = k.mem.table(mm.pgd)
        for i in np.nonzero(words)[0]:
            self.walk_pud(mm, int(words[i]), int(i) << PGDIR_SHIFT)
        for idx, name in ((MM_ANONPAGES, "anon"), (MM_FILEPAGES, "file"), (MM_SHMEMPAGES, "shmem")):
            if self.rss[idx] != mm.rss_stat[idx]:
                self.bad(
                    f"pid {mm.owner.pid}: rss {name} counter {mm.rss_stat[idx]} but "
                    f"{self.rss[idx]} pages mapped"
                )

    def _table(self, entry: int, where: str) -> np.ndarray | None:
        pfn = (entry & PTE_PFN_MASK) >> PAGE_SHIFT
        mem = self.k.mem
        if mem.range_of(pfn) is not mem.ram or not mem.ram.pages.flags[pfn] & PGTY_table:
            self.bad(f"{where}: entry {entry:#x} does not point to a page table")
            return None
        self.tables[pfn] += 1
        return mem.table(pfn)

    def walk_pud(self, mm, pgd_e: int, base: int) -> None:
        t = self._table(pgd_e, f"pgd@{base:#x}")
        if t is None:
            return
        for i in np.nonzero(t)[0]:
            self.walk_pmd(mm, int(t[i]), base + (int(i) << PUD_SHIFT))

    def walk_pmd(self, mm, pud_e: int, base: int) -> None:
        from hmmsim.mm.mmap import vma_lookup
        from hmmsim.mm.pgtable import entry_ptr

        t = self._table(pud_e, f"pud@{base:#x}")
        if t is None:
            return
        table_pfn = (pud_e & PTE_PFN_MASK) >> PAGE_SHIFT
        for i in np.nonzero(t)[0]:
            addr = base + (int(i) << PMD_SHIFT)
            e = int(t[i])
            pmdp = entry_ptr(table_pfn, int(i))
            if not e & 1 or pmd_leaf(e):
                vma = vma_lookup(mm, addr)
                if vma is None or vma.vm_end < addr + (1 << PMD_SHIFT):
                    self.bad(f"pid {mm.owner.pid}: huge PMD at {addr:#x} outside a vma")
                    continue
                self.huge_pmds.add(pmdp) if not vma.vm_flags & VM_HUGETLB else None
                self.check_pmd_leaf(mm, vma, addr, e)
                continue
            self.walk_pte(mm, e, addr)

    def check_pmd_leaf(self, mm, vma, addr: int, e: int) -> None:
        k = self.k
        if pmd_present(e):  # PROT_NONE huge PMDs too (_PAGE_PROTNONE | _PAGE_PSE)
            pfn = pmd_pfn(e)
            if pfn == k.huge_zero_pfn:
                return
            page = self._page(pfn, f"PMD {addr:#x}")
            if page is None:
                return
            if not page.a.flags[page.i] & PG_head:
                self.bad(f"PMD at {addr:#x} maps pfn {pfn:#x} that is not a folio head")
            self.pmd_maps[pfn] += 1
            self.refs[pfn] += 1
            if not vma.vm_flags & VM_HUGETLB:
                self.rss[MM_ANONPAGES] += HPAGE_PMD_NR
                self.check_anon_index(vma, addr, page)
            return
        swp = k.swp
        entry = swp.softleaf_from_pmd(e)
        if not (swp.softleaf_is_migration(entry) or swp.softleaf_is_device_private(entry)):
            self.bad(f"PMD at {addr:#x}: invalid PMD softleaf {e:#x}")
            return
        page = k.softleaf_to_page(entry)
        self.rss[MM_ANONPAGES] += HPAGE_PMD_NR
        if swp.softleaf_is_migration(entry):
            self.migrating.add(page.pfn)
            return
        self.pmd_maps[page.pfn] += 1
        self.refs[page.pfn] += 1

    def walk_pte(self, mm, pmd_e: int, base: int) -> None:
        """One PTE table: the plain present RAM entries in bulk, the rest one by one.

        An entry goes the bulk way only when nothing about it can be a
        problem: present, not special and not the zero page, naming an
        allocated RAM page that is not free (buddy or pcp) and not
        ZONE_DEVICE, inside a vma, and (for an anon page) reachable through
        that vma's anon_vma chain at its index. Its counts (PTE mappings,
        references, rss) are then added as arrays. Every other entry takes
        `_pte_entry`, in address order, so the problems and their order are
        the per-entry walk's.
        """
        t = self._table(pmd_e, f"pmd@{base:#x}")
        if t is None:
            return
        idx = np.nonzero(t & _NOT_AD)[0]  # pte_none (A/D only) entries are skipped
        if not len(idx):
            return
        slow = self._pte_bulk(mm, t, idx, base)
        swp = self.k.swp
        for i in idx[slow] if slow is not None else idx:
            self._pte_entry(mm, swp, base + (int(i) << PAGE_SHIFT), int(t[i]))

    def _pte_bulk(self, mm, t: np.ndarray, idx: np.ndarray, base: int) -> np.ndarray | None:
        """Account the bulk entries of one table; the mask of those left to `_pte_entry`."""
        from hmmsim.mm.mmap import vmas_in

        k = self.k
        w = t[idx]
        addr = base + (idx.astype(np.int64) << PAGE_SHIFT)
        vmas = vmas_in(
            mm, base + (int(idx[0]) << PAGE_SHIFT), base + ((int(idx[-1]) + 1) << PAGE_SHIFT)
        )
        if not vmas:
            return None
        vma_of = np.full(len(idx), -1, dtype=np.int64)
        for n, vma in enumerate(vmas):
            vma_of[(addr >= vma.vm_start) & (addr < vma.vm_end)] = n
        in_vma = vma_of >= 0
        pfn = pte_pfn_array(w)
        present = pte_present_array(w)
        zero = present & (pfn == k.mem.zero_pfn)  # the zero page: nothing to count
        cand = present & ~pte_special_array(w) & ~zero & in_vma
        ok = np.zeros(len(idx), dtype=bool)
        for r in k.mem.ranges:
            sel = cand & (pfn >= r.base) & (pfn < r.end)
            if sel.any():
                where = np.nonzero(sel)[0]
                ok[
                    where[
                        self._bulk_range(r, pfn[where] - r.base, addr[where], vma_of[where], vmas)
                    ]
                ] = True
        leaf = ~present & in_vma
        if self.device_leaf_bulk and leaf.any():
            self._device_leaf_bulk(w, np.flatnonzero(leaf), ok)
        return ~(ok | (zero & in_vma))

    #: _pte_bulk also accounts device-private and device-exclusive entries
    device_leaf_bulk = True

    def _device_leaf_bulk(self, w: np.ndarray, where: np.ndarray, ok: np.ndarray) -> None:
        """The device-private and device-exclusive entries among w[where]
        (non-present PTEs inside a vma): account them as `_pte_entry` does
        (a PTE mapping of the page, a reference and an anon rss page for its
        folio) and set them in ok. Only entries naming a page of a memory
        range whose folio is anonymous are taken; series (c)'s device-private
        offsets and Linux 6.12's device-exclusive entries (no mapping counted)
        stay per entry, like everything else."""
        from hmmsim.include.swapops import softleaf_from_pte_array

        k = self.k
        swp = k.swp
        sl = softleaf_from_pte_array(w[where])
        dp = swp.softleaf_is_device_private_array(sl)
        ex = swp.softleaf_is_device_exclusive_array(sl)
        take = (ex if k.config.has("c") else dp | ex) & swp.softleaf_has_pfn_array(sl)
        if k.config.kernel == "6.12":
            take &= ~ex
        if not take.any():
            return
        where, pfn = where[take], swp.softleaf_to_pfn_array(sl[take])
        for r in k.mem.ranges:
            sel = (pfn >= r.base) & (pfn < r.end)
            if not sel.any():
                continue
            i = pfn[sel] - r.base
            pa = r.pages
            head = i - pa.head_off[i].astype(np.int64)
            anon = (pa.mapping[head].astype(np.int64) & FOLIO_MAPPING_ANON) != 0
            if not anon.any():
                continue
            acc = self.bulk.setdefault(id(r), ([], []))
            acc[0].append(i[anon])
            acc[1].append(head[anon])
            self.rss[MM_ANONPAGES] += int(anon.sum())
            ok[where[sel][anon]] = True

    def _bulk_range(
        self, r, i: np.ndarray, addr: np.ndarray, vma_of: np.ndarray, vmas
    ) -> np.ndarray:
        """Present PTEs at `addr` mapping pages `i` of range r (vma vmas[vma_of]):
        count the ones `_pte_entry` would find no problem with; return their mask."""
        from hmmsim.mm.memremap import MEMORY_DEVICE_PRIVATE

        k = self.k
        pa = r.pages
        good = np.ones(len(i), dtype=bool)
        if r is k.mem.ram:  # a free page (buddy or pcp) is a problem
            good &= (pa.flags[i] & PGTY_buddy) == 0
            if self.pcp_mask is not None and r.base == 0:
                good &= ~self.pcp_mask[i]  # np.isin(i + r.base, pcp_arr), as a lookup
            elif self.pcp_arr is not None and len(self.pcp_arr):
                good &= ~np.isin(i + r.base, self.pcp_arr)
        pgmap = pa.pgmap[i]
        for pid in np.unique(pgmap).tolist() if pgmap.any() else ():
            if pid and k.pgmaps[pid].type == MEMORY_DEVICE_PRIVATE:
                good &= pgmap != pid
        mapping = pa.mapping[i].astype(np.int64)
        anon = (mapping & FOLIO_MAPPING_ANON) != 0
        for n, vma in enumerate(vmas):  # check_anon_index, per vma
            sel = good & anon & (vma_of == n)
            if not sel.any():
                continue
            index = pa.index[i[sel]].astype(np.int64)
            fine = (
                (index >= 0)
                & (index < (1 << 40))
                & (vma.vm_start + ((index - vma.vm_pgoff) << PAGE_SHIFT) == addr[sel])
            )
            chain = vma.anon_vma_chain
            av_ids = mapping[sel] & ~FOLIO_MAPPING_ANON
            for av_id in np.unique(av_ids).tolist():
                av = k.objects.get(av_id)
                if av is None or av not in chain:
                    fine &= av_ids != av_id
            good[np.nonzero(sel)[0][~fine]] = False
        fast = i[good]
        if len(fast):
            head = fast - pa.head_off[fast].astype(np.int64)
            acc = self.bulk.setdefault(id(r), ([], []))
            acc[0].append(fast)
            acc[1].append(head)
            hmap = pa.mapping[head].astype(np.int64)
            hanon = (hmap & FOLIO_MAPPING_ANON) != 0
            self.rss[MM_ANONPAGES] += int(hanon.sum())
            files = hmap[~hanon]
            if len(files):
                ids, cnt = np.unique(files, return_counts=True)
                for m, c in zip(ids.tolist(), cnt.tolist(), strict=True):
                    shmem = m and getattr(k.objects[m], "is_shmem", False)
                    self.rss[MM_SHMEMPAGES if shmem else MM_FILEPAGES] += c
        return good

    def _pte_entry(self, mm, swp, addr: int, e: int) -> None:
        """The per-entry check of one non-none PTE (the reference walk)."""
        from hmmsim.mm.memory import mm_counter
        from hmmsim.mm.mmap import vma_lookup

        k = self.k
        vma = vma_lookup(mm, addr)
        if vma is None:
            self.bad(f"pid {mm.owner.pid}: PTE {e:#x} at {addr:#x} outside any vma")
            return
        if pte_present(e):
            pfn = pte_pfn(e)
            if pte_special(e) or pfn == k.mem.zero_pfn:
                if pfn != k.mem.zero_pfn:
                    self.bad(f"special PTE at {addr:#x} maps {pfn:#x}, not the zero page")
                return
            page = self._page(pfn, f"PTE {addr:#x}")
            if page is None:
                return
            self.pte_maps[pfn] += 1
            head = pfn - int(page.a.head_off[page.i])
            self.refs[head] += 1
            from hmmsim.include.mm_types import page_folio

            self.rss[mm_counter(page_folio(page))] += 1
            if page.a.mapping[page.i] & FOLIO_MAPPING_ANON:
                self.check_anon_index(vma, addr, page)
            return
        entry = swp.softleaf_from_pte(e)
        try:
            typ = swp.softleaf_type(entry)
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            self.bad(f"PTE {e:#x} at {addr:#x} does not decode: {exc}")
            return
        if not swp.softleaf_has_pfn(entry):
            if not swp.softleaf_is_marker(entry):
                self.bad(f"PTE {e:#x} at {addr:#x}: unexpected softleaf {typ!r}")
            return
        page = k.softleaf_to_page(entry)
        from hmmsim.include.mm_types import page_folio

        folio = page_folio(page)
        self.rss[mm_counter(folio)] += 1
        if swp.softleaf_is_migration(entry):
            self.migrating.add(folio.pfn)
        elif swp.softleaf_is_device_private(entry) or swp.softleaf_is_device_exclusive(entry):
            # Linux 6.12 drops the rmap of a device-exclusive page (the
            # entry keeps only the reference; mm/rmap.c
            # page_make_device_exclusive_one); the pin keeps it mapped
            if not (k.config.kernel == "6.12" and swp.softleaf_is_device_exclusive(entry)):
                self.pte_maps[page.pfn] += 1
            self.refs[folio.pfn] += 1

    def check_anon_index(self, vma, addr: int, page) -> None:
        from hmmsim.mm.rmap import vma_address

        av_id = int(page.a.mapping[page.i]) & ~FOLIO_MAPPING_ANON
        av = self.k.objects.get(av_id)
        if av is None or av not in vma.anon_vma_chain:
            self.bad(f"anon page {page.pfn:#x} at {addr:#x} is not in the vma's anon_vma chain")
            return
        if vma_address(vma, int(page.a.index[page.i]), 1) != addr:
            self.bad(
                f"anon page {page.pfn:#x}: index {int(page.a.index[page.i]):#x} "
                f"does not give address {addr:#x} in {vma!r}"
            )

    def _page(self, pfn: int, where: str):
        from hmmsim.mm.memremap import is_device_private_page

        mem = self.k.mem
        r = mem.range_of(pfn)
        if r is None:
            self.bad(f"{where}: pfn {pfn:#x} has no struct page")
            return None
        page = mem.pfn_to_page(pfn)
        if r is mem.ram and (
            page.a.flags[page.i] & PGTY_buddy or pfn in getattr(self, "pcp_free", ())
        ):
            self.bad(f"{where}: maps free page {pfn:#x}")
            return None
        if is_device_private_page(page):
            self.bad(f"{where}: a present entry maps device-private page {pfn:#x}")
            return None
        return page

    def check_notifier_seqs(self, proc) -> None:
        seen = self.k.__dict__.setdefault("_invariant_seq_seen", {})
        for mni in proc.mm.notifier_subscriptions:
            key = id(mni)
            prev = seen.get(key)
            if prev is not None and prev[0] is mni and mni.invalidate_seq < prev[1]:
                self.bad(
                    f"pid {proc.pid}: notifier {mni!r} sequence went back from "
                    f"{prev[1]} to {mni.invalidate_seq}"
                )
            seen[key] = (mni, mni.invalidate_seq)

    def check_at_rest(self) -> None:
        """Nothing a single operation holds may outlive it."""
        from hmmsim.include.mm_types import PG_locked

        k = self.k
        for pfn in sorted(self.migrating)[:10]:
            self.bad(f"a migration entry for folio {pfn:#x} is left in a page table")
        for r in list(k.mem.ranges) + list(k.device_private_space.ranges):
            locked = np.nonzero(r.pages.flags & PG_locked)[0]
            for i in locked[:10]:
                self.bad(f"page {r.base + int(i):#x} is locked between operations")
        ram = k.mem.ram
        tables = np.nonzero(ram.pages.flags & PGTY_table)[0]
        for i in tables:
            if not self.tables.get(ram.base + int(i)):
                self.bad(f"page table {ram.base + int(i):#x} is referenced by nothing (leaked)")

    def check_token_plane(self) -> None:
        """The token data plane (hmmsim.data_plane): exactly the page-table
        pages have table words, and a table page's token is 0 (nothing stores
        data in a table page)."""
        ram = self.k.mem.ram
        if ram.tokens is None:
            return
        tables = np.flatnonzero(ram.pages.flags & PGTY_table)
        have = np.array(sorted(ram.words._row), dtype=np.int64)
        for pfn in np.setdiff1d(tables, have)[:10].tolist():
            self.bad(f"page table {pfn:#x} has no table words (token data plane)")
        for pfn in np.setdiff1d(have, tables)[:10].tolist():
            self.bad(f"page {pfn:#x} keeps table words but is not a page table")
        for pfn in tables[ram.tokens[tables] != 0][:10].tolist():
            self.bad(f"page table {pfn:#x} has token {int(ram.tokens[pfn]):#x}, not 0")

    def check_deposits(self) -> None:
        dep = set(self.k.deposited)
        if dep != self.huge_pmds:
            missing = sorted(self.huge_pmds - dep)
            extra = sorted(dep - self.huge_pmds)
            if missing:
                self.bad(f"huge PMDs without a deposited table: {[hex(x) for x in missing]}")
            if extra:
                self.bad(f"deposited tables for no huge PMD: {[hex(x) for x in extra]}")
        for t in self.k.deposited.values():
            self.tables[t] += 1

    # --- device mirrors ----------------------------------------------------------------------
    #: check_mirrors() compares the plain present PTEs of a dmirror table in bulk
    mirror_bulk = True

    def check_mirrors(self, proc) -> None:
        """A device page table never maps what the CPU no longer maps there.

        Any interval-notifier subscriber with a `pt` mapping (vpn -> (page, tag))
        is a mirror: each entry must name the page the CPU maps at that
        address (for device-private memory, the page's backing page; for a
        device-exclusive entry, the page it names), and a WRITE-tagged entry
        needs a CPU mapping that is writable or a writable device entry.

        Entries of a packed dmirror table whose CPU entry is a present PTE of
        the same page (writable where the tag is WRITE) are checked as arrays
        (`_mirror_bulk`); every other entry goes through `_mirror_entry`, in
        the table's order, so the problems and their order are the per-entry
        check's.
        """
        for mni in proc.mm.notifier_subscriptions:
            pt = getattr(mni.ops, "pt", None)
            if pt is None or not callable(getattr(pt, "items", None)):
                continue
            backing = getattr(type(mni.ops), "backing_page", None)
            pmds: dict[int, int] = {}
            bulk = self._mirror_bulk(proc, pt, pmds) if self.mirror_bulk else None
            if bulk is None:
                for vpn, (page, tag) in pt.items():
                    self._mirror_entry(proc, mni, backing, pmds, vpn, page, tag)
                continue
            vpns, packed, good = bulk
            for j in np.flatnonzero(~good).tolist():
                page, tag = pt._unpack(packed[j])
                self._mirror_entry(proc, mni, backing, pmds, vpns[j], page, tag)

    def _mirror_bulk(self, proc, pt, pmds: dict[int, int]):
        """(vpns, packed entries, good mask) of a packed dmirror table (the
        `_MirrorTable` of drivers/test_hmm/mirror.py) in its iteration order:
        good where the CPU maps the entry's page with a present PTE, writable
        if the entry is WRITE-tagged; None for any other kind of table."""
        from hmmsim.include.pgtable import _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, table_entry_pfn
        from hmmsim.mm.pgtable import pmd_offset, pmdp_get

        d = getattr(pt, "_d", None)
        if not isinstance(d, dict) or not d or not hasattr(pt, "_unpack"):
            return None
        k = self.k
        n = len(d)
        vpn_list = list(d.keys())
        packed_list = list(d.values())
        vpns = np.array(vpn_list, dtype=np.int64)
        packed = np.array(packed_list, dtype=np.int64)
        bases = np.array([a.base for a in pt.arrays] or [0], dtype=np.int64)
        aid = packed >> 40
        if int(aid.max()) >= len(pt.arrays) or int(aid.min()) < 0:
            return None
        pfn = bases[aid] + ((packed >> 2) & pt.IDX_MASK)
        e = np.zeros(n, dtype=np.uint64)
        ok_level = np.zeros(n, dtype=bool)
        words = k.mem.ram.words
        keys = vpns >> (PMD_SHIFT - PAGE_SHIFT)
        order = np.argsort(keys, kind="stable")
        ks = keys[order]
        cuts = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        for grp in np.split(order, cuts):
            key = int(keys[grp[0]])
            pmd = pmds.get(key)
            if pmd is None:
                pmdp = pmd_offset(proc.mm, key << PMD_SHIFT)
                pmd = pmds[key] = 0 if pmdp is None else pmdp_get(k, pmdp)
            if not pmd or pmd & _PAGE_PSE or not pmd & _PAGE_PRESENT:
                continue  # no table, or a PMD leaf: per entry
            e[grp] = words[table_entry_pfn(pmd), vpns[grp] & 511]
            ok_level[grp] = True
        rw = (e & np.uint64(_PAGE_RW)) != 0
        good = ok_level & pte_present_array(e) & (pte_pfn_array(e) == pfn)
        good &= ((packed & 3) != 3) | rw
        return vpn_list, packed_list, good

    def _mirror_entry(self, proc, mni, backing, pmds, vpn: int, page, tag: int) -> None:
        """check_mirrors() for one entry vpn -> (page, tag) of mni's table."""
        from hmmsim.include.pgtable import _PAGE_RW, pte_present

        k = self.k
        swp = k.swp
        addr = vpn << PAGE_SHIFT
        level, e = self._entry_at(proc, addr, pmds)
        ok, writable = False, False
        if level == "pmd" and pmd_present(e):
            ok = pmd_pfn(e) + ((addr >> PAGE_SHIFT) & 511) == page.pfn
            writable = bool(e & _PAGE_RW)
        elif e and pte_present(e):
            ok = pte_pfn(e) == page.pfn
            writable = bool(e & _PAGE_RW)
        elif e:
            entry = swp.softleaf_from_pmd(e) if level == "pmd" else swp.softleaf_from_pte(e)
            if swp.softleaf_has_pfn(entry) and not swp.softleaf_is_migration(entry):
                from hmmsim.include.mm_types import Page, page_folio

                cpu_page = k.softleaf_to_page(entry)
                sub = vpn & 511 if level == "pmd" else 0
                cpu_page = Page(k, cpu_page.a, cpu_page.i + sub)
                same = cpu_page == page
                if not same and backing is not None:
                    head = page_folio(cpu_page)
                    rhead = backing(head)
                    if rhead is not None:
                        off = cpu_page.i - head.i
                        same = Page(k, rhead.a, rhead.i + off) == page
                ok = same
                writable = swp.softleaf_is_device_private_write(entry) or (
                    swp.softleaf_is_device_exclusive(entry)
                )
        if not ok:
            self.bad(
                f"pid {proc.pid}: mirror {mni.ops!r} maps {addr:#x} -> "
                f"{page.pfn:#x} but the CPU has {level} {e:#x}"
            )
        elif tag == 3 and not writable:
            self.bad(
                f"pid {proc.pid}: mirror {mni.ops!r} maps {addr:#x} writable "
                f"but the CPU mapping is read-only"
            )

    def _entry_at(self, proc, addr: int, pmds: dict[int, int]) -> tuple[str, int]:
        """userspace.entry_at(proc, addr), reading each PMD once per check
        (pmds: PMD index -> PMD word; nothing changes while the checker runs)."""
        from hmmsim.include.pgtable import _PAGE_PRESENT, _PAGE_PSE
        from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map, ptep_get

        k = self.k
        key = addr >> PMD_SHIFT
        pmd = pmds.get(key)
        if pmd is None:
            pmdp = pmd_offset(proc.mm, addr)
            pmd = pmds[key] = 0 if pmdp is None else pmdp_get(k, pmdp)
        if not pmd:
            return "none", 0
        if pmd & _PAGE_PSE or not pmd & _PAGE_PRESENT:
            return "pmd", pmd
        return "pte", ptep_get(k, pte_offset_map(k, pmd, addr))

    # --- metadata vs what was found ---------------------------------------------------------
    def check_counts(self) -> None:
        k = self.k
        mem = k.mem
        for pfn, n in self.tables.items():
            if n != 1:
                self.bad(f"page table {pfn:#x} is referenced {n} times")
        cache_refs: Counter = Counter()
        for obj in k.objects.values():
            for pfn in getattr(obj, "cache", {}).values():
                cache_refs[pfn] += 1
        for pfn in k.hugetlb.shared_cache.values():
            cache_refs[pfn] += 1
        pte_maps = _pairs(self.pte_maps)
        refs = [_pairs(c) for c in (self.refs, cache_refs, k.driver_refs)]
        pins = _pairs(k.pins)
        for r in list(mem.ranges) + list(k.device_private_space.ranges):
            self._check_range_counts(r, pte_maps, refs, pins)

    def _check_range_counts(self, r, pte_maps, refs, pins) -> None:
        """check_counts for one memory range. Each rule is "for every page in
        use (not free in the buddy, not reserved) ..."; the arrays are compared
        whole first and the in-use test is applied to the disagreeing pages
        only (the same pages, in the same order, as testing every page)."""
        mem = self.k.mem
        p = r.pages
        base = r.base

        def in_use(i: np.ndarray) -> np.ndarray:
            keep = (p.flags[i] & PGTY_buddy) == 0
            if r is mem.ram:
                keep &= (p.flags[i] & PG_reserved) == 0
            return i[keep]

        pte = np.zeros(p.nr, dtype=np.int64)
        _add_in(pte, base, *pte_maps)
        bulk = self.bulk.get(id(r))
        if bulk:
            pte += np.bincount(np.concatenate(bulk[0]), minlength=p.nr)
        bad = in_use(np.nonzero(p._mapcount != pte - 1)[0])
        for i in bad[:10]:
            self.bad(
                f"pfn {base + int(i):#x}: _mapcount says {int(p._mapcount[i]) + 1} "
                f"PTE mappings, page tables have {int(pte[i])}"
            )
        heads = in_use(np.nonzero(p.flags & PG_head)[0])
        if len(heads):
            # every head's PMD mappings and PTE mappings of its pages, as
            # arrays; only the heads where either count disagrees are reported
            ents = np.zeros(len(heads), dtype=np.int64)
            for pfn, n in self.pmd_maps.items():
                j = int(np.searchsorted(heads, pfn - base))
                if base <= pfn < r.end and j < len(heads) and heads[j] == pfn - base:
                    ents[j] = n
            cum = np.concatenate(([0], np.cumsum(pte)))
            ends = np.minimum(heads + (1 << p.order[heads].astype(np.int64)), p.nr)
            totals = ents + cum[ends] - cum[heads]
            emc = p._entire_mapcount[heads].astype(np.int64) + 1
            lmc = p._large_mapcount[heads].astype(np.int64) + 1
            for i in heads[(emc != ents) | (lmc != totals)]:
                i = int(i)
                pfn = base + i
                n = 1 << int(p.order[i])
                ent = self.pmd_maps.get(pfn, 0)
                if int(p._entire_mapcount[i]) + 1 != ent:
                    self.bad(
                        f"folio {pfn:#x}: entire mapcount {int(p._entire_mapcount[i]) + 1}"
                        f" but {ent} PMD mappings"
                    )
                total = ent + int(pte[i : i + n].sum())
                if int(p._large_mapcount[i]) + 1 != total:
                    self.bad(
                        f"folio {pfn:#x}: large mapcount {int(p._large_mapcount[i]) + 1}"
                        f" but {total} mappings"
                    )
        tails = np.nonzero(p.head_off)[0]
        tails = in_use(tails[p._refcount[tails] != 0])
        for i in tails[:10]:
            self.bad(f"tail page {base + int(i):#x} has refcount {int(p._refcount[i])}")
        expected = np.zeros(p.nr, dtype=np.int64)
        if bulk:
            expected += np.bincount(np.concatenate(bulk[1]), minlength=p.nr)
        for keys, vals in refs:
            _add_in(expected, base, keys, vals)
        keys, vals = pins
        sel = (keys >= base) & (keys < base + p.nr)
        if sel.any():  # a pin of a small folio counts GUP_PIN_COUNTING_BIAS
            i = keys[sel] - base
            small = (p.flags[i] & PG_head) == 0
            np.add.at(expected, i, vals[sel] * np.where(small, GUP_PIN_COUNTING_BIAS, 1))
        # folios whose refcount is checked: heads and small pages in use, not
        # the zero page or page tables, not an unused hugetlb pool page, and
        # not under migration
        cand = in_use(np.nonzero(p._refcount != expected)[0])
        f = p.flags[cand]
        keep = (p.head_off[cand] == 0) & ((f & (PG_zero | PGTY_table)) == 0)
        keep &= ~(((f & PG_hugetlb) != 0) & (p._refcount[cand] == 0))  # hugetlb pool
        for pfn in self.migrating:
            if base <= pfn < r.end:
                keep &= cand != pfn - base
        for i in cand[keep][:10]:
            i = int(i)
            self.bad(
                f"folio {base + i:#x}: refcount {int(p._refcount[i])} but "
                f"{int(expected[i])} references found (mappings, cache, pins)"
            )


def _pairs(counter) -> tuple[np.ndarray, np.ndarray]:
    """A pfn -> count mapping as two int64 arrays (keys, counts)."""
    n = len(counter)
    return (
        np.fromiter(counter.keys(), dtype=np.int64, count=n),
        np.fromiter(counter.values(), dtype=np.int64, count=n),
    )


def _add_in(arr: np.ndarray, base: int, keys: np.ndarray, vals: np.ndarray) -> None:
    """arr[pfn - base] += count for each (pfn, count) with pfn inside arr's range."""
    sel = (keys >= base) & (keys < base + len(arr))
    if sel.any():
        np.add.at(arr, keys[sel] - base, vals[sel])


# --- migrate-PFN and HMM-PFN words ----------------------------------------------------------
def pfn_word_problems(k, kind: str, words, n: int | None = None) -> list[str]:
    """Decode every word of a src/dst array ("migrate") or hmm_pfns ("hmm").

    A word must use only defined flag bits; a VALID word must name a page
    (decoding it must not fail); under series (a)/(c) the device-private flag
    must be set exactly for device-private pages; a VALID | MIGRATE word (a
    source the collect step took) must name a folio that is locked and
    referenced, since the migration holds both until finalize: a
    device-private offset whose flag was lost decodes to whatever RAM page
    has that PFN, which the migration does not hold (the flag check alone
    cannot see that: the RAM page is not device-private either); an HMM
    word is never both VALID and ERROR. Returns the problems found (none
    for a good array).
    """
    from hmmsim.include.migrate import (
        MIGRATE_PFN_DEVICE_PRIVATE,
        MIGRATE_PFN_FLAGS_MASK,
        MIGRATE_PFN_MIGRATE,
        MIGRATE_PFN_SHIFT,
        MIGRATE_PFN_VALID,
    )
    from hmmsim.mm.memremap import is_device_private_page

    problems: list[str] = []
    n = len(words) if n is None else n
    L = k.hmm
    for i in range(n):
        v = int(words[i])
        if not v:
            continue
        try:
            if kind == "migrate":
                if v & MIGRATE_PFN_FLAGS_MASK & (1 << 2):
                    problems.append(f"{kind}[{i}] = {v:#x}: undefined flag bit 2")
                if not v & MIGRATE_PFN_VALID:
                    if v >> MIGRATE_PFN_SHIFT:
                        problems.append(f"{kind}[{i}] = {v:#x}: a PFN without VALID")
                    continue
                from hmmsim.mm.migrate import migrate_pfn_to_page

                page = migrate_pfn_to_page(v, k=k)
                flagged = bool(v & MIGRATE_PFN_DEVICE_PRIVATE)
                if k.config.has("a") and flagged != is_device_private_page(page):
                    problems.append(
                        f"{kind}[{i}] = {v:#x}: MIGRATE_PFN_DEVICE_PRIVATE is "
                        f"{'set' if flagged else 'clear'} for {page!r}"
                    )
                if v & MIGRATE_PFN_MIGRATE:
                    problems += _migrate_source_problems(kind, i, v, page)
            else:
                from hmmsim.mm.hmm import hmm_pfn_to_page

                if v & L.HMM_PFN_VALID and v & L.HMM_PFN_ERROR:
                    problems.append(f"{kind}[{i}] = {v:#x}: both VALID and ERROR")
                if not v & L.HMM_PFN_VALID:
                    continue
                page = hmm_pfn_to_page(k, v)
                dp = L.HMM_PFN_DEVICE_PRIVATE
                if dp and bool(v & dp) != is_device_private_page(page):
                    problems.append(f"{kind}[{i}] = {v:#x}: device-private flag wrong")
        except Exception as e:  # noqa: BLE001 - a word that does not decode
            problems.append(f"{kind}[{i}] = {v:#x} does not decode: {e}")
    return problems


def _migrate_source_problems(kind: str, i: int, v: int, page) -> list[str]:
    """A collected source: its folio is locked and has a reference (the
    migration's, from migrate_vma_collect or migrate_device_range, kept until
    migrate_vma_finalize)."""
    from hmmsim.include.mm_types import PG_locked, folio_ref_count, page_folio

    folio = page_folio(page)
    out = []
    if not folio.test(PG_locked):
        out.append(
            f"{kind}[{i}] = {v:#x}: MIGRATE source {folio!r} is not locked: "
            "the word names a page the migration does not hold"
        )
    if folio_ref_count(folio) < 1:
        out.append(f"{kind}[{i}] = {v:#x}: MIGRATE source {folio!r} is free")
    return out


def strict_word_check(k, kind: str, words, n: int | None = None) -> None:
    """A `Kernel.word_checks` hook: raise InvariantViolation on a bad word."""
    problems = pfn_word_problems(k, kind, words, n)
    if problems:
        raise InvariantViolation(problems)
