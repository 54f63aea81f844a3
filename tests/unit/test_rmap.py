"""rmap: anon_vma linkage across fork, rmap_walk, page_vma_mapped_walk, pagewalk."""

from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDWR,
    O_TMPFILE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import pmd_pfn, pte_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.mm.page_vma_mapped import (
    DEFINE_FOLIO_VMA_WALK,
    PVMW_MIGRATION,
    PageVmaMappedWalk,
    page_vma_mapped_walk,
    page_vma_mapped_walk_done,
)
from hmmsim.mm.pagewalk import ACTION_CONTINUE, mm_walk_ops, walk_page_range
from hmmsim.mm.rmap import folio_anon_vma, rmap_walk, rmap_walk_control
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE


def mappings(folio):
    found = []

    def one(f, vma, address, arg):
        found.append((vma.vm_mm.owner.pid, address))
        return True

    rmap_walk(folio, rmap_walk_control(rmap_one=one))
    return sorted(found)


def test_anon_rmap_finds_parent_and_child(k, proc, ok):
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"x")
    folio = k.mem.pfn_to_page(pte_pfn(entry_at(proc, a)[1]))
    child = proc.child(proc.fork())
    assert mappings(folio) == [(proc.pid, a), (child.pid, a)]
    # a page COWed in the child belongs to the child's own anon_vma only
    child.store(a, b"y")
    cfolio = k.mem.pfn_to_page(pte_pfn(entry_at(child, a)[1]))
    assert folio_anon_vma(cfolio) is not folio_anon_vma(folio)
    assert proc.mm.vmas[0] not in folio_anon_vma(cfolio).vmas
    assert mappings(cfolio) == [(child.pid, a)]
    ok(k)


def test_file_rmap_through_i_mmap(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    proc.ftruncate(fd, 8192)
    a = proc.mmap(0, 8192, RW, MAP_SHARED, fd, 0)
    b = proc.mmap(0, 4096, RW, MAP_SHARED, fd, 4096)
    proc.store(a + 4096, b"z")
    proc.load(b, 1)
    folio = k.mem.pfn_to_page(pte_pfn(entry_at(proc, b)[1]))
    assert mappings(folio) == sorted([(proc.pid, a + 4096), (proc.pid, b)])
    ok(k)


def test_page_vma_mapped_walk_pte_and_pmd(k, proc, ok):
    a = proc.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    proc.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    proc.store(h, b"t")
    vma = (
        proc.mm.vmas[0]
        if proc.mm.vmas[0].vm_start <= h < proc.mm.vmas[0].vm_end
        else [v for v in proc.mm.vmas if v.vm_start <= h < v.vm_end][0]
    )
    pfn = pmd_pfn(entry_at(proc, h)[1])
    w = DEFINE_FOLIO_VMA_WALK(k.mem.pfn_to_page(pfn), vma, h)
    assert page_vma_mapped_walk(w) and w.pte is None and w.pmd is not None
    assert w.ptl.is_locked()
    assert not page_vma_mapped_walk(w)
    assert not w.ptl if w.ptl is None else not w.ptl.is_locked()
    # migration mode never matches a present mapping
    w = PageVmaMappedWalk(pfn, 512, vma, h, PVMW_MIGRATION)
    assert not page_vma_mapped_walk(w)
    small = proc.mmap(0, 3 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(small + 4096, b"s")
    svma = [v for v in proc.mm.vmas if v.vm_start == small][0]
    spfn = pte_pfn(entry_at(proc, small + 4096)[1])
    w = PageVmaMappedWalk(spfn, 1, svma, small + 4096)
    assert page_vma_mapped_walk(w) and w.address == small + 4096 and w.pte is not None
    page_vma_mapped_walk_done(w)
    ok(k)


def test_walk_page_range_visits_pmds_ptes_and_holes(k, proc, ok):
    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a + 4096, b"1")
    seen = {"pte": [], "hole": [], "pmd": 0}

    def pte_entry(ptep, addr, nxt, walk):
        from hmmsim.mm.pgtable import ptep_get

        if ptep_get(k, ptep):
            seen["pte"].append(addr)
        return 0

    def pte_hole(addr, nxt, depth, walk):
        seen["hole"].append((addr, nxt, depth))
        return 0

    def pmd_entry(pmdp, addr, nxt, walk):
        seen["pmd"] += 1
        return 0

    ops = mm_walk_ops(pmd_entry=pmd_entry, pte_entry=pte_entry, pte_hole=pte_hole)
    proc.mm.mmap_lock.down_read()
    try:
        assert walk_page_range(proc.mm, a - 4096, a + 4 * 4096, ops) == 0
        stop = mm_walk_ops(pmd_entry=lambda *x: -14)
        assert walk_page_range(proc.mm, a, a + 4096, stop) == -14
        cont = mm_walk_ops(
            pmd_entry=lambda p, ad, n, w: setattr(w, "action", ACTION_CONTINUE) or 0,
            pte_entry=lambda *x: 1 / 0,
        )
        assert walk_page_range(proc.mm, a, a + 4096, cont) == 0
    finally:
        proc.mm.mmap_lock.up_read()
    assert seen["pte"] == [a + 4096]
    assert seen["hole"][0] == (a - 4096, a, -1)
    assert seen["pmd"] >= 1
    ok(k)
