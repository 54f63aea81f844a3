"""fast/test_hmm.FrameCopies: the driver's queued one-page copies, done
together at flush, leave exactly the bytes of copying each page in turn.

The queued pairs come in the shapes a migration window gives: runs where
both sides step up by one frame, runs where both step down (pages handed
out from a pcp list), a run that turns from up to down, sides that step
in opposite directions, and scattered pages; plus zero-fills.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmsim.fast.test_hmm import FrameCopies
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.kernel import Kernel

NFRAMES = 96  # frames 0..47 are sources, 48..95 destinations


class _Dev:
    """The two attributes of a dmirror_device that FrameCopies uses."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.frame_copy_scratch = None


def _kernel() -> Kernel:
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    frames = k.mem.ram.frames
    frames[:NFRAMES] = np.random.default_rng(1).integers(0, 256, (NFRAMES, PAGE_SIZE), np.uint8)
    return k


def _pairs_of(shape: str, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    src = np.arange(48)
    dst = np.arange(48, 96)
    if shape == "up":
        return list(zip(dst[:n].tolist(), src[:n].tolist(), strict=True))
    if shape == "down":
        return list(zip(dst[:n][::-1].tolist(), src[:n][::-1].tolist(), strict=True))
    if shape == "up-then-down":
        h = n // 2
        return list(zip(dst[:h].tolist(), src[:h].tolist(), strict=True)) + list(
            zip(dst[h:n][::-1].tolist(), src[h:n][::-1].tolist(), strict=True)
        )
    if shape == "opposite":
        return list(zip(dst[:n].tolist(), src[:n][::-1].tolist(), strict=True))
    return list(
        zip(rng.permutation(dst)[:n].tolist(), rng.permutation(src)[:n].tolist(), strict=True)
    )


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(
            st.sampled_from(["up", "down", "up-then-down", "opposite", "scattered"]),
            st.integers(1, 12),
        ),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 1000),
)
def test_flush_is_each_copy_in_turn(shapes, seed):
    rng = np.random.default_rng(seed)
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for shape, n in shapes:
        for t, f in _pairs_of(shape, n, rng):
            if t not in used:  # destinations are distinct fresh pages
                used.add(t)
                pairs.append((t, f))
    zero = [t for t in range(48, 96) if t not in used][:3]
    bulk, ref = _kernel(), _kernel()
    copies = FrameCopies(_Dev(bulk))
    assert bulk.fastpath
    for t, f in pairs:
        copies.copy_pfn(t, f)
    copies.zero.extend(zero)
    copies.flush()
    frames = ref.mem.ram.frames
    for t, f in pairs:
        frames[t] = frames[f]
    frames[zero] = 0
    assert np.array_equal(bulk.mem.ram.frames[:NFRAMES], frames[:NFRAMES])
    assert not copies.to and not copies.zero


def test_descending_runs_are_slice_copies_not_a_gather():
    """Both sides stepping down by one frame is one run: no gather (the
    scratch buffer is never made)."""
    k = _kernel()
    dev = _Dev(k)
    copies = FrameCopies(dev)
    for j in range(40):
        copies.copy_pfn(95 - j, 47 - j)
    copies.flush()
    assert dev.frame_copy_scratch is None
    assert np.array_equal(k.mem.ram.frames[56:96], _kernel().mem.ram.frames[8:48])


def test_one_queued_copy_is_that_copy():
    """A CPU fault's single page (no zero-fill): the frame is copied, nothing else moves."""
    bulk, ref = _kernel(), _kernel()
    dev = _Dev(bulk)
    copies = FrameCopies(dev)
    copies.copy_pfn(50, 7)
    copies.flush()
    frames = ref.mem.ram.frames
    frames[50] = frames[7]
    assert np.array_equal(bulk.mem.ram.frames[:NFRAMES], frames[:NFRAMES])
    assert not copies.to and not copies.frm and not copies.zero
    assert dev.frame_copy_scratch is None
    copies.copy_pfn(51, 8)  # the queue is reusable after the flush
    copies.zero.append(52)
    copies.flush()
    frames[51] = frames[8]
    frames[52] = 0
    assert np.array_equal(bulk.mem.ram.frames[:NFRAMES], frames[:NFRAMES])
