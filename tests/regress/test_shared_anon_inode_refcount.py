"""Regression (found by `hmmsim fuzz`): MAP_SHARED|MAP_ANONYMOUS took no file
reference, so munmap dropped one it never had. The unnamed shmem file must
live exactly as long as its last mapping."""

from hmmsim.include.mman import MAP_ANONYMOUS, MAP_SHARED, PROT_READ, PROT_WRITE
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants


def test_shared_anon_lifetime_across_fork_split_and_unmap():
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    p = k.spawn()
    free0 = k.mem.nr_free
    a = p.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS)
    p.store(a, b"shared")
    child = p.child(p.fork())
    p.munmap(a + 4096, 4096)  # splits the parent's vma
    p.munmap(a, 4 * 4096)
    assert child.load(a, 6) == b"shared"  # the child's mapping keeps the file
    check_invariants(k)
    child._exit(0)
    p.waitpid(child.pid)
    check_invariants(k)
    assert k.mem.nr_free >= free0 - 8  # the shmem page went with the last mapping
