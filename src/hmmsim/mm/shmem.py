"""tmpfs/shmem: files whose pages live only in the page cache.

Models: mm/shmem.c (shmem_file_setup, shmem_zero_setup, shmem_fault,
map_pages (filemap_map_pages, see filemap.py), shmem_get_folio,
shmem_setattr/shmem_truncate_range, shmem_fallocate's hole punch,
shmem_file_read_iter/write_iter) and
mm/truncate.c (truncate_inode_pages_range, unmap_mapping_range) @ torvalds/linux 0eaed89c18ae.

A `shmem_inode` is the inode and its address_space in one object: the page
cache maps file index -> PFN of an order-0 folio. Each cached folio holds one
reference for the cache (folio_nr_pages in the kernel). MAP_SHARED anonymous
memory is an unnamed shmem file, as shmem_zero_setup makes it.

Differences from kernel: no shmem THP, no swap, no size limits beyond RAM.
"""

from __future__ import annotations

from hmmsim.errno import EFBIG, EINVAL, ENOMEM
from hmmsim.include.mm import VM_FAULT_LOCKED, VM_FAULT_OOM, VM_FAULT_SIGBUS
from hmmsim.include.mm_types import (
    Page,
    PG_dirty,
    PG_lru,
    PG_uptodate,
    folio_put,
    page_folio,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.locking import folio_lock, folio_unlock
from hmmsim.mm.page_alloc import GFP_HIGHUSER_MOVABLE, GFP_ZERO_BIT

MAX_LFS_FILESIZE = (1 << 63) - 1


class shmem_inode:
    """A tmpfs inode and its page cache.

    Fields: id (what folio->mapping holds); i_size; cache (index -> pfn);
    i_mmap (vmas mapping the file); name.
    Invariant: every cached folio has mapping == id and index == its key.
    """

    is_shmem = True

    def __init__(self, k, name: str, size: int = 0) -> None:
        self.k = k
        self.id = k.new_object_id(self)
        self.name = name
        self.i_size = size
        self.cache: dict[int, int] = {}
        self.i_mmap: set = set()
        self.nlink = 1
        self.i_count = 0

    def __repr__(self) -> str:
        return f"<shmem {self.name} size={self.i_size:#x} cached={len(self.cache)}>"

    # --- page cache --------------------------------------------------------------------------
    def find_folio(self, index: int) -> Page | None:
        pfn = self.cache.get(index)
        return None if pfn is None else self.k.mem.pfn_to_page(pfn)

    def shmem_get_folio(self, index: int) -> Page | None:
        """Find or create the cache folio at index; returned locked, referenced.

        Returns None when no memory is left (-ENOMEM).
        """
        folio = self.find_folio(index)
        if folio is None:
            folio = self.k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE | GFP_ZERO_BIT)
            if folio is None:
                return None
            folio.a.mapping[folio.i] = self.id
            folio.a.index[folio.i] = index
            folio.set(PG_uptodate | PG_lru)
            folio.a._refcount[folio.i] += 1  # the page cache's reference
            self.cache[index] = folio.pfn
        else:
            folio.a._refcount[folio.i] += 1
        folio_lock(folio)
        return folio

    # --- vm_operations_struct ------------------------------------------------------------------
    def fault(self, vmf) -> int:
        """shmem_fault(): VM_FAULT_LOCKED with vmf.page set, or SIGBUS past EOF."""
        index = vmf.pgoff
        if index >= (self.i_size + PAGE_SIZE - 1) >> PAGE_SHIFT:
            return VM_FAULT_SIGBUS
        folio = self.shmem_get_folio(index)
        if folio is None:
            return VM_FAULT_OOM
        vmf.page = folio
        return VM_FAULT_LOCKED

    def map_pages(self, vmf, start_pgoff: int, end_pgoff: int) -> int:
        """shmem_vm_ops/shmem_anon_vm_ops .map_pages = filemap_map_pages (fault-around)."""
        from hmmsim.mm.filemap import filemap_map_pages

        return filemap_map_pages(vmf, start_pgoff, end_pgoff)

    # --- file operations ----------------------------------------------------------------------
    def read(self, offset: int, n: int) -> bytes:
        """shmem_file_read_iter(): holes read as zeroes; stops at i_size."""
        end = min(offset + n, self.i_size)
        out = bytearray()
        pos = offset
        while pos < end:
            index, off = pos >> PAGE_SHIFT, pos & (PAGE_SIZE - 1)
            chunk = min(PAGE_SIZE - off, end - pos)
            folio = self.find_folio(index)
            if folio is None:
                out += bytes(chunk)
            else:
                out += self.k.mem.frame(folio.pfn)[off : off + chunk].tobytes()
            pos += chunk
        return bytes(out)

    def write(self, offset: int, data: bytes) -> int:
        """shmem_file_write_iter(): returns bytes written or -errno."""
        if offset + len(data) > MAX_LFS_FILESIZE:
            return -EFBIG
        pos = offset
        view = memoryview(data)
        done = 0
        while done < len(data):
            index, off = pos >> PAGE_SHIFT, pos & (PAGE_SIZE - 1)
            chunk = min(PAGE_SIZE - off, len(data) - done)
            folio = self.shmem_get_folio(index)
            if folio is None:
                return done or -ENOMEM
            frame = self.k.mem.frame(folio.pfn)
            frame[off : off + chunk] = memoryview(bytes(view[done : done + chunk]))
            folio.set(PG_dirty)
            folio_unlock(folio)
            folio_put(folio)
            done += chunk
            pos += chunk
        self.i_size = max(self.i_size, offset + len(data))
        return done

    def setattr_size(self, size: int) -> int:
        """ftruncate(): grow, or shrink and drop cached pages past the new end."""
        if size < 0:
            return -EINVAL
        if size > MAX_LFS_FILESIZE:
            return -EFBIG
        old = self.i_size
        self.i_size = size
        if size < old:
            first = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
            self.unmap_mapping_range(first)
            self.truncate_inode_pages_range(first)
            if size & (PAGE_SIZE - 1):  # zero the tail of the last partial page
                folio = self.find_folio(size >> PAGE_SHIFT)
                if folio is not None:
                    self.k.mem.frame(folio.pfn)[size & (PAGE_SIZE - 1) :] = 0
        return 0

    def unmap_mapping_range(
        self, first_index: int, last_index: int | None = None, even_cows: bool = True
    ) -> None:
        """Zap every user mapping of file pages first_index..last_index (None: to the end).

        even_cows=False (a hole punch) leaves private COW copies mapped.
        """
        from hmmsim.mm.memory import unmap_page_range
        from hmmsim.mm.mmu_notifier import notify_range

        for vma in sorted(self.i_mmap, key=lambda v: v.vm_start):
            vstart = vma.vm_start + max(0, (first_index - vma.vm_pgoff)) * PAGE_SIZE
            vend = vma.vm_end
            if last_index is not None:
                vend = min(vend, vma.vm_start + (last_index + 1 - vma.vm_pgoff) * PAGE_SIZE)
            if vstart >= vend:
                continue
            with notify_range(vma.vm_mm, MMU_NOTIFY_CLEAR, vstart, vend):
                unmap_page_range(vma, vstart, vend, even_cows)

    def punch_hole(self, offset: int, length: int) -> int:
        """vfs_fallocate(PUNCH_HOLE | KEEP_SIZE) on tmpfs: 0 or -errno.

        fs/open.c vfs_fallocate (length <= 0 or offset < 0 is -EINVAL; an end
        past MAX_LFS_FILESIZE or an overflowed loff_t is -EFBIG), then
        mm/shmem.c shmem_fallocate's hole punch: unmap the whole pages of the
        hole from every mapping without even_cows (private COW copies stay),
        then drop them from the page cache (shmem_truncate_range). i_size is
        kept. Callers pass page-aligned ranges (madvise_remove).
        """
        if offset < 0 or length <= 0:
            return -EINVAL
        end = offset + length
        if end > MAX_LFS_FILESIZE or end >= 1 << 63:
            return -EFBIG
        first = (offset + PAGE_SIZE - 1) >> PAGE_SHIFT
        last = (end >> PAGE_SHIFT) - 1  # inclusive: round_down(end) - 1
        if last >= first:
            self.unmap_mapping_range(first, last, even_cows=False)
        # shmem_undo_range: the whole pages of [offset, end) leave the cache.
        self.truncate_inode_pages_range(first, last)
        return 0

    def truncate_inode_pages_range(self, first_index: int, last_index: int | None = None) -> None:
        """Drop the cached folios at first_index..last_index (to the end if None)."""
        for index in sorted(
            i for i in self.cache if i >= first_index and (last_index is None or i <= last_index)
        ):
            folio = self.k.mem.pfn_to_page(self.cache.pop(index))
            folio_lock(folio)
            folio.a.mapping[folio.i] = 0
            folio_unlock(folio)
            folio_put(page_folio(folio))  # drop the page cache's reference

    def evict(self) -> None:
        """The last reference to the inode is gone: free its page cache."""
        self.truncate_inode_pages_range(0)
        self.k.objects.pop(self.id, None)


def shmem_file_setup(k, name: str, size: int) -> shmem_inode:
    return shmem_inode(k, name, size)


def shmem_zero_setup(vma) -> shmem_inode:
    """Back a MAP_SHARED|MAP_ANONYMOUS vma with an unnamed shmem file."""
    k = vma.vm_mm.k
    inode = shmem_file_setup(k, "dev/zero (deleted)", vma.vm_end - vma.vm_start)
    inode.nlink = 0  # unnamed: freed with its last mapping
    k.fget(inode)  # the vma's reference
    vma.vm_file = inode
    vma.vm_pgoff = 0
    return inode
