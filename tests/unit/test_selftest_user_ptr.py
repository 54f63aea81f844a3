"""The selftest port's `user_ptr`: indexed loads and stores through the simulated CPU.

`user_ptr` turns a sorted index array into runs of consecutive elements and
does one CPU access per run; an index array that spans exactly its length
is a single run without a scan for breaks. Every form must touch exactly the
elements a per-element C loop touches, and refuse what a C loop could not be.
"""

import numpy as np
import pytest

from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.selftests.harness import Task, run_as, user_ptr


@pytest.fixture
def ptr(proc):
    addr = proc.mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    return proc, addr


def _per_element(proc, addr, idx, vals) -> np.ndarray:
    """What a C loop `for (...) ptr[idx[j]] = vals[j]` leaves, read back element by element."""
    for i, v in zip(idx, vals, strict=True):
        proc.store_array(addr + int(i) * 4, np.array([v], dtype=np.int32))
    return proc.load_array(addr, 8 * 1024, np.int32)


INDEXES = {
    "contiguous": np.arange(5, 3000),
    "from_zero_whole": np.arange(0, 8 * 1024),
    "gaps": np.concatenate((np.arange(3, 900), np.arange(1000, 1500), [4000, 4001, 8000])),
    "one": np.array([77]),
    "two_apart": np.array([10, 4000]),
    "span_matches_but_gap": np.array([0, 2, 3]),  # span 3 != size - 1 = 2: has a gap
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_store_and_load_touch_the_elements_a_c_loop_touches(ptr, k, name):
    proc, addr = ptr
    idx = INDEXES[name]
    vals = (idx * 7 + 3).astype(np.int32)
    p = user_ptr(addr)

    def go():
        p[idx] = vals
        return p[idx]

    got = run_as(Task(proc, None), go)
    assert np.array_equal(got, vals)
    after = proc.load_array(addr, 8 * 1024, np.int32)
    proc2 = k.spawn("ref")
    addr2 = proc2.mmap(addr, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    assert addr2 == addr
    assert np.array_equal(after, _per_element(proc2, addr2, idx, vals))


@pytest.mark.parametrize(
    "idx", [np.array([3, 2, 4]), np.array([1, 1, 2]), np.array([5, 4, 3, 2, 1, 0])]
)
def test_unsorted_or_repeated_indices_are_refused(ptr, idx):
    proc, addr = ptr
    p = user_ptr(addr)
    with pytest.raises(ValueError, match="strictly increasing"):
        run_as(Task(proc, None), lambda: p.__setitem__(idx, 1))
    with pytest.raises(ValueError, match="strictly increasing"):
        run_as(Task(proc, None), lambda: p[idx])
