"""The token data plane against the byte plane: the same operations, with
stores that keep every page in token form, end in the same state (each
page's token is the first 8 bytes of its byte-plane frame and the rest of
that frame is zero; page tables, struct pages, device memory identical);
the fuzzer runs clean on tokens, and its oracle catches a lost copy there.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hmmsim.fast import test_hmm as fast_test_hmm
from hmmsim.kconfig import KConfig
from hmmsim.sim.engine import Simulation
from hmmsim.testing.fuzz import Generator, SeqConfig, World, run_fuzz

FIELDS = (
    "_refcount",
    "_mapcount",
    "flags",
    "order",
    "head_off",
    "mapping",
    "index",
    "pgmap",
    "zone_device_data",
    "_entire_mapcount",
    "_large_mapcount",
)


def _same_pages(fb, tp, what: str) -> None:
    """Byte frames fb and token pages tp hold the same contents."""
    fb = np.asarray(fb)
    assert not fb[:, 8:].any(), f"{what}: a byte-plane page left token form"
    want = fb[:, :8].copy().view("<u8")[:, 0]
    got = tp.token_values()
    bad = np.flatnonzero(want != got)
    assert not len(bad), f"{what}: page {int(bad[0])}: token {got[bad[0]]:#x} != {want[bad[0]]:#x}"


def assert_same_state(kb, kt) -> None:
    """Kernel kb (bytes) and kt (tokens) hold the same memory and struct pages."""
    assert [(r.base, r.end) for r in kb.mem.ranges] == [(r.base, r.end) for r in kt.mem.ranges]
    tables = sorted(kt.mem.ram.words._row)
    for rb, rt in zip(kb.mem.ranges, kt.mem.ranges, strict=True):
        for f in FIELDS:
            a, b = getattr(rb.pages, f), getattr(rt.pages, f)
            bad = np.flatnonzero(a != b)
            assert not len(bad), f"{rb.name}: struct page {f} differs at {rb.base + int(bad[0]):#x}"
        if rb.frames is None:
            assert rt.frames is None
            continue
        data = np.ones(rb.end - rb.base, dtype=bool)
        if rb is kb.mem.ram:  # the page tables: their words, in both planes
            data[tables] = False
            for pfn in tables:
                assert np.array_equal(kb.mem.ram.words[pfn], kt.mem.ram.words[pfn]), hex(pfn)
                assert int(rt.tokens[pfn]) == 0
        idx = np.flatnonzero(data)
        _same_pages(rb.frames[idx], rt.frames[idx], rb.name)


def _fuzz_pair(seed: int, steps: int, bytes_too: bool = True) -> tuple[World | None, World]:
    """One generated sequence run on a token World and, step by step, on a
    byte World whose stores are token-form too (bytes_too)."""
    rng = random.Random(seed)
    fs = [frozenset({"d"}), frozenset({"a", "b", "d"}), frozenset({"a", "b", "c", "d"})]
    feats = fs[seed % len(fs)]
    thp = ["always", "madvise", "never"][seed % 3]
    wt = World(SeqConfig(feats, None, thp, data_plane="tokens"))
    wb = World(SeqConfig(feats, None, thp)) if bytes_too else None
    if wb is not None:
        wb.token_stores = True
    gen = Generator(wt, rng)
    for _ in range(steps):
        op = gen.next()
        applied = wt.apply(op)
        if wb is not None:
            assert wb.apply(op) == applied, op
    wt.check()
    if wb is not None:
        wb.check()
    return wb, wt


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_sequences_end_in_the_same_state(seed):
    wb, wt = _fuzz_pair(seed, 120)
    assert_same_state(wb.k, wt.k)
    assert wb.stats == wt.stats


def _sim_pair(spec: str, policy: str, features=None):
    out = []
    for plane in ("bytes", "tokens"):
        cfg = KConfig(data_plane=plane, features=features)
        sim = Simulation(spec, policy, config=cfg)
        out.append((sim, sim.run()))
    return out


@pytest.mark.parametrize(
    "spec,policy,features",
    [
        # evictions, CPU faults back to RAM, compound (THP) device copies
        ("random:size=4M,n=2000,write=0.3,oversub=1.5", "nvidia-uvm", None),
        ("pingpong:size=2M,rounds=2,oversub=1.5", "naive", None),
        ("stream:size=4M,passes=2,oversub=1.5", "amd-svm-thp", frozenset("abd")),
    ],
)
def test_simulations_end_in_the_same_state(spec, policy, features):
    """The simulator's writes (the access number in a page's first 8 bytes)
    keep pages in token form: same metrics, same RAM, same VRAM."""
    (sb, mb), (st, mt) = _sim_pair(spec, policy, features)
    assert mb.data_errors == mt.data_errors == 0
    assert mb.pages_d2h and mb.pages_h2d
    assert mb.as_dict() == mt.as_dict()
    assert_same_state(sb.k, st.k)
    assert len(sb.dev.chunks) == len(st.dev.chunks)
    for cb, ct in zip(sb.dev.chunks, st.dev.chunks, strict=True):
        _same_pages(cb.vram, ct.vram, f"chunk {cb.index}")


def test_fuzz_runs_clean_on_tokens():
    for seed in (1, 2):
        rep = run_fuzz(200, seed, data_plane="tokens", shrink_seconds=5)
        assert rep.failing_sequences == 0, rep.violations[0].message


def test_a_lost_copy_is_caught_on_tokens(monkeypatch):
    """dmirror's migration copies with one page copy dropped: the token-plane
    oracle reports the page's lost data."""
    real = fast_test_hmm.FrameCopies.copy
    dropped = []

    def copy(self, to, frm):
        if frm is not None and not dropped and self.k.mem.data_plane == "tokens":
            dropped.append(to.pfn)
            return
        real(self, to, frm)

    monkeypatch.setattr(fast_test_hmm.FrameCopies, "copy", copy)
    rep = run_fuzz(300, 1, data_plane="tokens", shrink_seconds=2)
    assert dropped, "the sequence made no migration copy"
    assert rep.failing_sequences == 1
    v = rep.violations[0]
    assert v.signature.startswith("data"), (v.signature, v.message)
    assert v.bytes_lost > 0


def test_the_sweep_compares_tokens(monkeypatch):
    """A token changed behind the model's back (a page's data lost) is what
    the oracle's sweep reports, through its token compare."""
    from hmmsim.testing.fuzz import FuzzFailure
    from hmmsim.testing.fuzz.oracle import Oracle

    _, wt = _fuzz_pair(3, 150, bytes_too=False)
    k = wt.k
    calls = []
    real = Oracle._tokens_equal
    monkeypatch.setattr(
        Oracle, "_tokens_equal", lambda self, pgs, pfns: calls.append(1) or real(self, pgs, pfns)
    )
    wt.sweep()
    assert calls, "the sweep did not compare tokens"
    ram = k.mem.ram
    mapped = np.flatnonzero((ram.tokens != 0) & (ram.pages._mapcount >= 0))
    assert len(mapped), "no mapped page holds data"
    ram.tokens[mapped[0]] ^= np.uint64(1 << 8)
    with pytest.raises(FuzzFailure) as e:
        wt.sweep()
    assert e.value.kind == "data" and "1 bytes differ" in e.value.message


# --- every copy path, scripted ---------------------------------------------------------------
def _pages(n: int, base: int) -> np.ndarray:
    """n pages of token form: page i holds token base + i."""
    buf = np.zeros((n, 4096), dtype=np.uint8)
    buf[:, :8] = (np.arange(n, dtype="<u8") + np.uint64(base)).view(np.uint8).reshape(n, 8)
    return buf.reshape(-1)


def _script(k) -> list[bytes]:
    """THP fault and COW, khugepaged collapse, hugetlb COW, shmem write/read
    and mapping, dmirror THP migration to device and back, mremap; returns
    what the processes read at the end."""
    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import (
        HMM_DMIRROR_MIGRATE_TO_DEV,
        HMM_DMIRROR_MIGRATE_TO_SYS,
        hmm_dmirror_cmd,
    )
    from hmmsim.include.mman import (
        MADV_COLLAPSE,
        MAP_ANONYMOUS,
        MAP_HUGETLB,
        MAP_PRIVATE,
        MAP_SHARED,
        MREMAP_MAYMOVE,
        O_RDWR,
        O_TMPFILE,
        PROT_READ,
        PROT_WRITE,
    )
    from hmmsim.kconfig import PMD_SIZE

    rw, anon = PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
    hmm_dmirror_init(k)
    p = k.spawn("p")

    def huge_region():
        a = p.mmap(0, 2 * PMD_SIZE, rw, anon)
        return (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)

    k.thp_enabled = "always"
    t = huge_region()
    p.store(t, _pages(512, 1000))  # a THP
    c = p.child(p.fork())
    c.store(t + 5 * 4096, _pages(1, 7))  # COW of the THP in the child
    k.thp_enabled = "madvise"
    s = huge_region()
    p.store(s, _pages(300, 5000))  # small pages ...
    assert p.madvise(s, PMD_SIZE, MADV_COLLAPSE) == 0  # ... collapsed by khugepaged
    h = p.mmap(0, PMD_SIZE, rw, anon | MAP_HUGETLB)
    p.store(h, _pages(512, 9000))
    c2 = p.child(p.fork())
    c2.store(h + 3 * 4096, _pages(1, 11))  # hugetlb COW copy
    fd = p.open("/tmp", O_TMPFILE | O_RDWR)
    assert p.pwrite(fd, _pages(8, 20000).tobytes(), 0) == 8 * 4096
    m = p.mmap(0, 8 * 4096, rw, MAP_SHARED, fd, 0)
    p.store(m + 2 * 4096, _pages(1, 33))
    dfd = p.open("/dev/hmm_dmirror0", O_RDWR)
    k.thp_enabled = "always"
    d = huge_region()
    p.store(d, _pages(512, 40000))
    buf = np.zeros(512 * 4096, np.uint8)
    assert p.ioctl(dfd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(d, buf, 512)) == 0
    assert p.ioctl(dfd, HMM_DMIRROR_MIGRATE_TO_SYS, hmm_dmirror_cmd(d, buf, 256)) == 0
    p.store(d + 300 * 4096, _pages(1, 5))  # a CPU fault on a device page
    r = p.mremap(t, PMD_SIZE, PMD_SIZE, MREMAP_MAYMOVE)
    out = [p.load(a, n) for a, n in ((r, PMD_SIZE), (s, PMD_SIZE), (h, PMD_SIZE), (d, PMD_SIZE))]
    out += [p.pread(fd, 8 * 4096, 0), c.load(t, PMD_SIZE), c2.load(h, PMD_SIZE)]
    return out


def test_every_copy_path_ends_in_the_same_state():
    from hmmsim.kernel import Kernel
    from hmmsim.testing.invariants import check_invariants

    kb = Kernel(features=frozenset("abd"))
    kt = Kernel(features=frozenset("abd"), data_plane="tokens")
    ob, ot = _script(kb), _script(kt)
    assert ob == ot
    assert_same_state(kb, kt)
    check_invariants(kt)


def test_copy_paths_take_little_host_memory_on_a_big_token_kernel():
    """Every copy path of _script on a 16 GiB token Kernel allocates a few
    MiB of host memory (its own buffers), never a range's worth of bytes."""
    import tracemalloc

    from hmmsim.kernel import Kernel

    k = Kernel(features=frozenset("abd"), data_plane="tokens", ram_bytes=16 << 30)
    tracemalloc.start()
    try:
        _script(k)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_sim_cli_data_plane_option():
    import json

    from click.testing import CliRunner

    from hmmsim.cli import main

    base = ["sim", "pingpong:size=2M,rounds=2,oversub=1.5", "--json"]
    rb = CliRunner().invoke(main, base)
    rt = CliRunner().invoke(main, [*base, "--data-plane", "tokens"])
    assert rb.exit_code == 0 and rt.exit_code == 0, rt.output
    db, dt = json.loads(rb.output), json.loads(rt.output)
    assert db.pop("data_plane") == "bytes" and dt.pop("data_plane") == "tokens"
    assert db == dt and dt["pages_d2h"] and dt["data_errors"] == 0
    r = CliRunner().invoke(main, [*base, "--data-plane", "words"])
    assert r.exit_code == 2 and "'words' is not one of 'bytes', 'tokens'" in r.output


def test_fuzz_cli_data_plane_option(tmp_path):
    import json

    from click.testing import CliRunner

    from hmmsim.cli import main

    args = ["fuzz", "--steps", "60", "--seed", "3", "--data-plane", "tokens", "--json"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "s.py")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["data_plane"] == "tokens" and d["failing_sequences"] == 0 and d["steps"] == 60


def test_the_alias_and_device_allocator_fuzzers_run_clean_on_tokens():
    """Their driver copies (a device's own store, buddy-allocated device
    pages, THP and split migrations) move tokens; the data checks see them."""
    from hmmsim.testing.alias_fuzz import run_alias_fuzz
    from hmmsim.testing.devalloc_fuzz import run_devalloc_fuzz

    rep = run_alias_fuzz(3, 1, data_plane="tokens")
    assert not rep.failure and rep.migrated and rep.aliased
    rep = run_devalloc_fuzz(1, 1, data_plane="tokens")
    assert not rep.failure and rep.migrated
