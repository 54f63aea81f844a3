"""The oracle: the model's memory read without faults and compared with the shadow,
and the World's check points.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable

import numpy as np

from hmmsim.include.pgtable import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    pmd_pfn,
    pmd_present,
    pte_none,
    pte_none_array,
    pte_pfn,
    pte_pfn_array,
    pte_present,
    pte_present_array,
    table_entry_pfn,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.mm.pgtable import pmd_offset
from hmmsim.testing.fuzz.ops import (
    HPAGE_NR,
    FuzzFailure,
    describe_bytes,
)
from hmmsim.testing.fuzz.peek import PeekError, peek_frame, peek_unmapped
from hmmsim.testing.fuzz.shadow import (
    PageState,
    ProcState,
)
from hmmsim.testing.invariants import check_invariants

#: verify(): a page with nothing populated (reads as zeros)
_NONE = object()
_UNMAPPED = object()
_ZERO_PAGE = bytes(PAGE_SIZE)


class Oracle:
    """The World's checks (a mixin of World): compare a buffer with the shadow,
    verify pages of a process against it without faulting, sweep all memory,
    and the check point (invariant checker, warnings, sweep)."""

    def compare(self, got, want: bytes, what: str, var: str, small_assert: bool = False) -> None:
        g = np.frombuffer(bytes(got), dtype=np.uint8) if not isinstance(got, np.ndarray) else got
        w = np.frombuffer(want, dtype=np.uint8)
        self.bytes_checked += w.size
        if g.size == w.size and np.array_equal(g, w):
            if small_assert and w.size <= 64:
                self.emit(f"assert {var} == bytes.fromhex({want.hex()!r}), {var}")
            return
        bad = int(np.count_nonzero(g != w)) if g.size == w.size else w.size
        first = int(np.flatnonzero(g != w)[0]) if g.size == w.size else 0
        f = FuzzFailure(
            "data",
            f"{what}: {bad} of {w.size} bytes differ, first at +{first:#x}; "
            f"expected {describe_bytes(w)}; got {describe_bytes(g)}",
            check=[f"expect_bytes({var}, {_literal(want)}, {what!r})"],
        )
        f.bytes_lost = bad
        raise f

    def verify(self, ps: ProcState, addr: int, npages: int) -> None:
        """Compare the pages of [addr, +npages) with the shadow, reading without faults.

        The same reading as peek_frame(), but walking each PMD once and the PTEs
        of a table as one array (sweeps cover every mapped page).
        """
        k = self.k
        mm = ps.proc.mm
        words = k.mem.ram.words
        pages = ps.pages
        end = addr + npages * PAGE_SIZE
        while addr < end:
            blk_end = min((addr | (HPAGE_NR * PAGE_SIZE - 1)) + 1, end)
            pmdp = pmd_offset(mm, addr)
            pmd = 0 if pmdp is None else int(words[pmdp >> PAGE_SHIFT, (pmdp >> 3) & 511])
            if pmd and pmd & _PAGE_PSE or pmd and not pmd & _PAGE_PRESENT:
                if (
                    pmd & _PAGE_PSE
                    and pmd_present(pmd)
                    and self._huge_equal(ps, addr, blk_end, pmd)
                ):
                    addr = blk_end
                    continue
                for a in range(addr, blk_end, PAGE_SIZE):  # huge page or PMD softleaf
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is not None and pg.cell is not None:
                        self._verify_page(ps, a, pg, None)
            elif pmd:
                i0 = (addr >> PAGE_SHIFT) & (HPAGE_NR - 1)
                ptes = words[table_entry_pfn(pmd), i0 : i0 + ((blk_end - addr) >> PAGE_SHIFT)]
                done = self._ptes_equal(ps, addr, ptes)
                for j, e in enumerate(ptes.tolist()):
                    if done is not None and done[j]:
                        self.bytes_checked += PAGE_SIZE
                        continue
                    a = addr + (j << PAGE_SHIFT)
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is None or pg.cell is None:
                        continue
                    if pte_none(e):
                        self._verify_page(ps, a, pg, _NONE if pg.obj is None else _UNMAPPED)
                    elif pte_present(e):
                        self._verify_page(ps, a, pg, k.mem.frame(pte_pfn(e)))
                    else:
                        self._verify_page(ps, a, pg, None)
            else:
                for a in range(addr, blk_end, PAGE_SIZE):
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is None or pg.cell is None:
                        continue
                    if pg.obj is None and pg.cell.data is None:  # zeros read as zeros
                        self.bytes_checked += PAGE_SIZE
                        continue
                    self._verify_page(ps, a, pg, _NONE if pg.obj is None else _UNMAPPED)
            addr = blk_end

    def _frames_equal(self, pgs: list, pfns: np.ndarray) -> bool:
        """Whether the frames pfns (RAM or device-coherent: any range with a
        linear map) hold exactly the shadow bytes of pages pgs, in one
        compare; False also when a PFN has no frame (the per-page path then
        reports it)."""
        if self.k.mem.data_plane == "tokens":
            return self._tokens_equal(pgs, pfns)
        got = np.empty((len(pfns), PAGE_SIZE), dtype=np.uint8)
        if not self._gather(pfns, "frames", got):
            return False
        want = b"".join(_ZERO_PAGE if pg.cell.data is None else pg.cell.data for pg in pgs)
        return got.tobytes() == want

    def _gather(self, pfns: np.ndarray, plane: str, got: np.ndarray) -> bool:
        """Fill got[i] with the contents of page pfns[i] from each memory
        range's `plane` array ("frames": 4096 bytes a row, "tokens": one
        token); False when a PFN lies in no range or in one without that
        array."""
        covered = 0
        for r in self.k.mem.ranges:
            sel = (pfns >= r.base) & (pfns < r.end)
            n = int(np.count_nonzero(sel))
            if not n:
                continue
            arr = getattr(r, plane)
            if arr is None:
                return False
            got[sel] = arr[pfns[sel] - r.base]
            covered += n
        return covered == len(pfns)

    def _tokens_equal(self, pgs: list, pfns: np.ndarray) -> bool:
        """_frames_equal in the token data plane: the pages' tokens against the
        shadow's first 8 bytes, and the shadow's other bytes zero (what a
        token page reads as), in one compare."""
        got = np.empty(len(pfns), dtype=np.uint64)
        if not self._gather(pfns, "tokens", got):
            return False
        want = np.zeros((len(pgs), PAGE_SIZE), dtype=np.uint8)
        for i, pg in enumerate(pgs):
            if pg.cell.data is not None:
                want[i] = np.frombuffer(pg.cell.data, dtype=np.uint8)
        if want[:, 8:].any():
            return False  # the per-page path reports the bytes a token page cannot hold
        return bool((want[:, :8].copy().view("<u8")[:, 0] == got).all())

    def _ptes_equal(self, ps: ProcState, addr: int, ptes: np.ndarray) -> list[bool] | None:
        """verify()'s bulk form for one table: the pages mapped by present PTEs
        (one compare of their frames with the shadow) and the never-written
        private pages of empty PTEs (zeros, nothing to read). When every page
        mapped holds its shadow bytes, return which entries are done (the
        per-page loop counts them as checked, in order, and checks the rest);
        None: check them all one by one, which reports the first difference."""
        present = pte_present_array(ptes)
        kinds = np.where(present, 1, np.where(pte_none_array(ptes), 2, 0)).tolist()
        pages = ps.pages
        vpn = addr >> PAGE_SHIFT
        done = [False] * len(kinds)
        js, pgs = [], []
        for j, kind in enumerate(kinds):
            pg = pages.get(vpn + j)
            if pg is None or pg.cell is None or not kind:
                continue
            if kind == 1:
                js.append(j)
                pgs.append(pg)
            elif pg.obj is None and pg.cell.data is None:
                done[j] = True
        if js:
            if not self._frames_equal(pgs, pte_pfn_array(ptes[js])):
                return None
            for j in js:
                done[j] = True
        return done

    def _huge_equal(self, ps: ProcState, addr: int, end: int, pmd: int) -> bool:
        """verify()'s bulk form for a present huge PMD over [addr, end): True when
        every shadowed page holds its bytes (counted as checked)."""
        pages = ps.pages
        vpn = addr >> PAGE_SHIFT
        subs, pgs = [], []
        for j in range((end - addr) >> PAGE_SHIFT):
            pg = pages.get(vpn + j)
            if pg is not None and pg.cell is not None:
                subs.append(((addr >> PAGE_SHIFT) + j) & (HPAGE_NR - 1))
                pgs.append(pg)
        if not pgs:
            return True
        if not self._frames_equal(pgs, pmd_pfn(pmd) + np.asarray(subs, dtype=np.int64)):
            return False
        self.bytes_checked += len(pgs) * PAGE_SIZE
        return True

    def verify_slow(self, ps: ProcState, addr: int, npages: int) -> None:
        """verify() page by page through peek_frame() (the specification of verify)."""
        for v in range(addr >> PAGE_SHIFT, (addr >> PAGE_SHIFT) + npages):
            pg = ps.pages.get(v)
            if pg is not None and pg.cell is not None:
                self._verify_page(ps, v << PAGE_SHIFT, pg, None)

    def _verify_page(self, ps: ProcState, a: int, pg: PageState, got) -> None:
        """Compare one page; got is its frame, _NONE for zeros, None to
        peek_frame(), _UNMAPPED to peek_unmapped() (no entry maps it)."""
        if got is None or got is _UNMAPPED:
            try:
                if got is None:
                    got = peek_frame(self.k, ps.proc, a)
                else:
                    got = peek_unmapped(self.k, ps.proc, a)
            except PeekError as e:
                raise FuzzFailure(
                    "data", f"p{ps.h}: {e}", check=[f"peek(k, p{ps.h}, {a:#x}, {PAGE_SIZE})"]
                ) from None
            if got is None:
                got = _NONE
        want = pg.cell.data
        self.bytes_checked += PAGE_SIZE
        if want is None:
            if got is _NONE or not got.any():
                return
            bad = int(np.count_nonzero(got))
        else:
            if got is not _NONE and got.tobytes() == want:
                return
            w = np.frombuffer(want, dtype=np.uint8)
            bad = int(np.count_nonzero(w)) if got is _NONE else int(np.count_nonzero(got != w))
        exp = want if want is not None else bytes(PAGE_SIZE)
        have = bytes(PAGE_SIZE) if got is _NONE else got
        f = FuzzFailure(
            "data",
            f"p{ps.h} page {a:#x}: {bad} bytes differ; expected "
            f"{describe_bytes(exp)}; memory holds {describe_bytes(have)}",
            check=[
                f"expect_bytes(peek(k, p{ps.h}, {a:#x}, {PAGE_SIZE:#x}), {_literal(exp)}, "
                f"'p{ps.h} memory at {a:#x}')"
            ],
        )
        f.bytes_lost = bad
        raise f

    def sweep(self, procs: Iterable[ProcState] | None = None) -> None:
        """verify() every mapped page of the given (default: all) processes."""
        for ps in list(procs if procs is not None else self.procs.values()):
            keys = ps.keys()
            i = 0
            while i < len(keys):  # runs of consecutive pages
                j = i
                while j + 1 < len(keys) and keys[j + 1] == keys[j] + 1:
                    j += 1
                self.verify(ps, keys[i] << PAGE_SHIFT, j - i + 1)
                i = j + 1

    def check(self, sweep: bool = True) -> None:
        """A check point: the invariant checker, warnings, and (sweep) all memory."""
        self.emit("ok()")
        problems = check_invariants(self.k, raise_on_error=False)
        self.stats["invariant_checks"] += 1
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            f = FuzzFailure("invariant", problems[0] + more)
            f.step = self.steps - 1
            raise f
        self.check_warnings()
        if sweep:
            self.stats["sweeps"] += 1
            self.sweep()


def _literal(data: bytes) -> str:
    """A Python expression for data: compact for zeros and short buffers."""
    if not any(data):
        return f"bytes({len(data)})"
    if len(data) <= 64:
        return f"bytes.fromhex({data.hex()!r})"
    enc = base64.b85encode(zlib.compress(data, 9)).decode()
    parts = [enc[i : i + 88] for i in range(0, len(enc), 88)]
    return "blob(\n    " + "\n    ".join(repr(p) for p in parts) + "\n)"
