"""The token data plane (hmmsim.data_plane, KConfig.data_plane="tokens"):
one u64 per page whose bytes are the token, little-endian, then 4088 zeros.

Its views behave as the byte plane's NumPy frames do for every store that
keeps pages in that form (a differential test against a real byte array),
refuse every other store without changing anything, and a Kernel built on
it holds 8 bytes of host memory per page instead of 4096.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmsim.bug import KernelBug
from hmmsim.data_plane import TokenPages, TokenPlaneError
from hmmsim.include.mm_types import MM_ANONPAGES
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PAGE_SIZE, ConfigError, KConfig
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def tok(v: int) -> np.ndarray:
    """A page's bytes holding token v."""
    page = np.zeros(PAGE_SIZE, dtype=np.uint8)
    page[:8] = np.array([v], dtype="<u8").view(np.uint8)
    return page


def u64(b: bytes) -> int:
    return int.from_bytes(b[:8], "little")


# --- the view against a byte array ------------------------------------------------------------
NR = 6


def _row_key(draw):
    kind = draw(st.sampled_from(["int", "neg", "slice", "array", "mask"]))
    if kind == "int":
        return draw(st.integers(0, NR - 1))
    if kind == "neg":
        return -draw(st.integers(1, NR))
    if kind == "slice":
        a = draw(st.integers(0, NR))
        return slice(a, draw(st.integers(a, NR)), draw(st.sampled_from([None, 1, 2])))
    if kind == "array":
        return np.array(
            draw(st.lists(st.integers(0, NR - 1), min_size=1, max_size=4, unique=True)),
            dtype=np.int64,
        )
    return np.array(draw(st.lists(st.booleans(), min_size=NR, max_size=NR)))


def _col_key(draw):
    kind = draw(st.sampled_from(["none", "low", "edge", "any", "int", "step"]))
    if kind == "none":
        return None
    if kind == "edge":  # across the token's end
        return slice(draw(st.integers(0, 8)), draw(st.integers(8, 16)))
    if kind == "low":  # within the token bytes
        a = draw(st.integers(0, 8))
        return slice(a, draw(st.integers(a, 8)))
    if kind == "any":
        a = draw(st.integers(0, PAGE_SIZE))
        return slice(a, draw(st.integers(a, PAGE_SIZE)))
    if kind == "int":
        return draw(st.sampled_from([0, 3, 7, 8, 100, PAGE_SIZE - 1]))
    return slice(0, 16, 3)


@st.composite
def ops(draw):
    out = []
    for _ in range(draw(st.integers(1, 8))):
        rk = _row_key(draw)
        ck = _col_key(draw)
        src = draw(st.sampled_from(["scalar", "zero", "bytes", "pages", "bad", "poke"]))
        v = draw(st.integers(0, 2**64 - 1))
        out.append((rk, ck, src, v, draw(st.integers(0, NR - 1)), draw(st.integers(0, 12))))
    return out


def _value(ref, tp, rk, ck, src, v, j, c):
    """The same value for the byte array and the token view."""
    shape = ref[(rk, ck) if ck is not None else rk].shape
    if src == "scalar":
        return v & 0xFF, v & 0xFF
    if src == "zero":
        return 0, 0
    if src == "pages":  # another page of the same store (a page copy)
        if ck is not None:
            return None
        return ref[j].copy(), tp[j]
    width = shape[-1] if shape else 1
    if src == "poke":  # zeros but one byte, at column c of the value
        val = np.zeros(shape, dtype=np.uint8)
        if val.size:
            val.reshape(-1, width)[:, min(c, width - 1)] = v & 0xFF or 1
        return val, val
    raw = np.frombuffer(np.array([v], dtype="<u8").tobytes() * (width // 8 + 1), np.uint8)
    val = np.broadcast_to(raw[:width].copy(), shape).copy() if shape else raw[0]
    if src == "bad" and np.size(val) and np.ndim(val):
        val = val.copy()
        val.reshape(-1)[-1] = 0x5A  # a byte that may fall at a page offset >= 8
    return val, val


@settings(max_examples=120, deadline=None)
@given(ops())
def test_token_pages_store_and_read_like_a_byte_array(seq):
    """Every store gives the byte array's result when that result keeps all
    pages in token form, and raises TokenPlaneError leaving the pages as
    they were otherwise; every read gives the byte array's bytes."""
    ref = np.zeros((NR, PAGE_SIZE), dtype=np.uint8)
    for i in range(NR):
        ref[i] = tok(0x0102030405060708 * (i + 1) & (2**64 - 1))
    tp = TokenPages(ref[:, :8].copy().view("<u8")[:, 0].astype(np.uint64))
    for rk, ck, src, v, j, c in seq:
        pair = _value(ref, tp, rk, ck, src, v, j, c)
        if pair is None:
            continue
        rv, tv = pair
        key = rk if ck is None else (rk, ck)
        trial = ref.copy()
        trial[key] = rv
        before = tp.tokens.copy()
        if trial[:, 8:].any():
            with pytest.raises(TokenPlaneError):
                tp[key] = tv
            assert (tp.tokens == before).all()
        else:
            tp[key] = tv
            ref = trial
        assert np.array_equal(np.asarray(tp), ref)
        got = tp[key]
        assert np.array_equal(np.asarray(got), ref[key])


def test_token_page_reads_and_refusals():
    tp = TokenPages(np.zeros(3, dtype=np.uint64))
    assert tp.shape == (3, PAGE_SIZE) and tp[1].shape == (PAGE_SIZE,)
    assert tp[1].tobytes() == bytes(PAGE_SIZE)
    tp[1, :8] = np.array([0x1122334455667788], "<u8").view(np.uint8)
    assert int(tp.tokens[1]) == 0x1122334455667788
    tp[1][2:4] = 0  # bytes 2 and 3 of the token
    assert int(tp.tokens[1]) == 0x1122334400007788
    tp[1][8:] = 0  # zeros where zeros are: allowed
    with pytest.raises(TokenPlaneError, match="byte 4095 of a page"):
        tp[1][4095] = 1
    with pytest.raises(TokenPlaneError):
        tp[:] = np.ones(PAGE_SIZE, np.uint8)
    assert int(tp.tokens[1]) == 0x1122334400007788 and not tp.tokens[[0, 2]].any()
    # a read is a copy: writing through it is an error, not a lost store
    with pytest.raises(ValueError):
        tp[1][0:8][0] = 9
    tp[2] = tp[1]
    assert int(tp.tokens[2]) == 0x1122334400007788
    out = np.empty((2, PAGE_SIZE), np.uint8)
    np.take(tp, [2, 0], axis=0, out=out, mode="clip")
    assert u64(out[0].tobytes()) == 0x1122334400007788 and not out[1].any()


# --- the Kernel ------------------------------------------------------------------------------
def test_data_plane_is_checked_and_named():
    with pytest.raises(ConfigError, match="data_plane"):
        KConfig(data_plane="words")
    k = Kernel(data_plane="tokens")
    assert k.mem.data_plane == "tokens" and "data=tokens" in repr(k.config)
    assert isinstance(k.mem.ram.frames, TokenPages)
    assert isinstance(Kernel().mem.ram.frames, np.ndarray)


def test_host_memory_is_8_bytes_a_page():
    """A 16 GiB token Kernel allocates well under 64 bytes of host memory per
    page in all (the struct page columns are 47); the byte plane would
    allocate 4096 per page for the frames alone."""
    ram = 16 << 30
    tracemalloc.start()
    try:
        k = Kernel(ram_bytes=ram, data_plane="tokens")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    nr = ram // PAGE_SIZE
    assert k.mem.ram.tokens.nbytes == nr * 8
    assert peak < 64 * nr, peak


def test_a_store_is_checked_whole_before_anything_happens():
    k = Kernel(data_plane="tokens")
    p = k.spawn("p")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.store(a, tok(5).tobytes())
    buf = np.concatenate([tok(1), tok(2), tok(3)])
    buf[2 * PAGE_SIZE + 100] = 1  # the third page's byte 100
    with pytest.raises(TokenPlaneError, match=f"byte 100 of the page at {a + 3 * PAGE_SIZE:#x}"):
        p.store(a + PAGE_SIZE, buf)
    assert p.mm.rss_stat[MM_ANONPAGES] == 1  # no fault was taken for the rejected store
    assert u64(p.load(a, 8)) == 5
    with pytest.raises(TokenPlaneError):  # unaligned: bytes 4..11 of a page
        p.store(a + 4, bytes(range(1, 9)))
    p.store(a + 4, bytes([1, 2, 3, 4, 0, 0, 0, 0]))
    assert p.load(a, 16) == bytes([5, 0, 0, 0, 1, 2, 3, 4]) + bytes(8)
    check_invariants(k)


def test_loads_cow_and_zero_page_on_tokens():
    k = Kernel(data_plane="tokens")
    p = k.spawn("p")
    a = p.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    assert p.load(a + 3 * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)  # the zero page
    for i in range(8):
        p.store(a + i * PAGE_SIZE, np.array([100 + i], dtype="<u8"))
    c = p.child(p.fork())
    p.store(a + PAGE_SIZE, np.array([7], dtype="<u8"))  # COW copy in the parent
    c.store(a + 2 * PAGE_SIZE + 3, b"\x09")  # and in the child, one byte of the token
    assert u64(p.load(a + PAGE_SIZE, 8)) == 7 and u64(c.load(a + PAGE_SIZE, 8)) == 101
    assert u64(c.load(a + 2 * PAGE_SIZE, 8)) == 102 | (9 << 24)
    assert u64(p.load(a + 2 * PAGE_SIZE, 8)) == 102
    assert p.load(a + PAGE_SIZE + 8, PAGE_SIZE - 8) == bytes(PAGE_SIZE - 8)
    check_invariants(k)


def test_page_tables_keep_their_words_in_their_own_store():
    k = Kernel(data_plane="tokens")
    words = k.mem.ram.words
    base = len(words)
    p = k.spawn("p")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.store(a, tok(1).tobytes())
    assert len(words) > base  # the new PTE/PMD/PUD tables got words
    with pytest.raises(KernelBug, match="not a page table"):
        words[k.mem.zero_pfn]
    p.munmap(a, 4 * PAGE_SIZE)
    p._exit(0)
    assert len(words) == base  # freed tables gave theirs back
    check_invariants(k)


def test_file_and_device_writes_are_refused_whole():
    """pwrite and a dmirror WRITE that would make a byte at a page offset >= 8
    non-zero raise TokenPlaneError with nothing written (no locked folio,
    no bounce buffer left behind); a device READ into user memory at an
    offset that would put a token past byte 7 raises it too, not -EFAULT."""
    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ, HMM_DMIRROR_WRITE, hmm_dmirror_cmd
    from hmmsim.include.mman import O_RDWR, O_TMPFILE

    k = Kernel(data_plane="tokens")
    hmm_dmirror_init(k)
    p = k.spawn("p")
    fd = p.open("/tmp", O_TMPFILE | O_RDWR)
    assert p.pwrite(fd, np.concatenate([tok(1), tok(2)]).tobytes(), 0) == 2 * PAGE_SIZE
    bad = np.concatenate([tok(3), tok(4)])
    bad[PAGE_SIZE + 9] = 1
    with pytest.raises(TokenPlaneError, match="byte 9 of the page at 0x1000"):
        p.pwrite(fd, bad.tobytes(), 0)
    assert p.pread(fd, 2 * PAGE_SIZE, 0) == np.concatenate([tok(1), tok(2)]).tobytes()
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.store(a, np.concatenate([tok(5), tok(6)]))
    dfd = p.open("/dev/hmm_dmirror0", O_RDWR)
    free = k.mem.nr_free
    with pytest.raises(TokenPlaneError):
        p.ioctl(dfd, HMM_DMIRROR_WRITE, hmm_dmirror_cmd(a, bad, 2))
    assert k.mem.nr_free == free  # the bounce buffer's pages went back
    assert u64(p.load(a, 8)) == 5 and u64(p.load(a + PAGE_SIZE, 8)) == 6
    good = np.concatenate([tok(0x1122334455667788), tok(8)])
    assert p.ioctl(dfd, HMM_DMIRROR_WRITE, hmm_dmirror_cmd(a, good, 2)) == 0
    assert u64(p.load(a + PAGE_SIZE, 8)) == 8
    with pytest.raises(TokenPlaneError):  # the token's bytes 4..7 would land at 8..11
        p.ioctl(dfd, HMM_DMIRROR_READ, hmm_dmirror_cmd(a, a + 2 * PAGE_SIZE + 4, 1))
    assert p.ioctl(dfd, HMM_DMIRROR_READ, hmm_dmirror_cmd(a, a + 2 * PAGE_SIZE, 2)) == 0
    assert u64(p.load(a + 3 * PAGE_SIZE, 8)) == 8
    check_invariants(k)


def test_the_invariant_checker_checks_the_table_store():
    from hmmsim.mm.pgtable import alloc_table, free_table

    k = Kernel(data_plane="tokens")
    p = k.spawn("p")
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.store(a, tok(1))
    assert check_invariants(k, raise_on_error=False) == []
    pfn = alloc_table(k)
    k.mem.ram.words.detach(pfn)  # a table without its words
    problems = check_invariants(k, raise_on_error=False)
    assert f"page table {pfn:#x} has no table words (token data plane)" in problems
    k.mem.ram.words.attach(pfn)
    k.mem.ram.tokens[pfn] = 5
    problems = check_invariants(k, raise_on_error=False)
    assert f"page table {pfn:#x} has token 0x5, not 0" in problems
    k.mem.ram.tokens[pfn] = 0
    free_table(k, pfn)
    k.mem.ram.words.attach(pfn)  # words kept by a page that is no table
    problems = check_invariants(k, raise_on_error=False)
    assert f"page {pfn:#x} keeps table words but is not a page table" in problems


@pytest.mark.slow
def test_a_64g_region_is_touched_in_little_host_memory():
    """A 66 GiB token Kernel; every page of a 64 GiB anonymous region stored
    (its number as token, 64 MiB stores) and read back at both ends: the
    process's peak RSS stays near 55 bytes a page (struct page and token)
    plus the page tables' words, far from the 64 GiB the bytes would take.
    (Under a minute and about 1 GiB of host memory.)"""
    import resource

    gib = 1 << 30
    size = 64 * gib
    k = Kernel(ram_bytes=size + 2 * gib, data_plane="tokens")
    p = k.spawn("p")
    a = p.mmap(0, size, RW, ANON)
    chunk = 64 << 20
    npg = chunk // PAGE_SIZE
    buf = np.zeros((npg, PAGE_SIZE), dtype=np.uint8)
    for off in range(0, size, chunk):
        first = off // PAGE_SIZE + 1
        buf[:, :8] = (np.arange(npg, dtype="<u8") + first).view(np.uint8).reshape(npg, 8)
        p.store(a + off, buf)
    npages = size // PAGE_SIZE
    assert p.mm.rss_stat[MM_ANONPAGES] == npages
    for i in (0, 12345, npages - 1):
        assert u64(p.load(a + i * PAGE_SIZE, 8)) == i + 1
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_kib < 3 << 20, f"peak RSS {peak_kib >> 10} MiB"
