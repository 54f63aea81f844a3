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


def _fuzz_pair(seed: int, steps: int) -> tuple[World, World]:
    """One generated sequence run on a token World and, step by step, on a
    byte World whose stores are token-form too."""
    rng = random.Random(seed)
    fs = [frozenset({"d"}), frozenset({"a", "b", "d"}), frozenset({"a", "b", "c", "d"})]
    feats = fs[seed % len(fs)]
    thp = ["always", "madvise", "never"][seed % 3]
    wt = World(SeqConfig(feats, None, thp, data_plane="tokens"))
    wb = World(SeqConfig(feats, None, thp))
    wb.token_stores = True
    gen = Generator(wt, rng)
    for _ in range(steps):
        op = gen.next()
        applied = wt.apply(op)
        assert wb.apply(op) == applied, op
    wt.check()
    wb.check()
    return wb, wt


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fuzz_sequences_end_in_the_same_state(seed):
    wb, wt = _fuzz_pair(seed, 150)
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

    wb, wt = _fuzz_pair(3, 150)
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
