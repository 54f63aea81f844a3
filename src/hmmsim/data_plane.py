"""The token data plane: one 64-bit token per page instead of 4096 bytes.

Not a kernel file: a storage choice of the model (issue 17 item 6), picked
per Kernel with `KConfig(data_plane=...)`:

- ``"bytes"`` (the default): every CPU-addressable page has its 4096 bytes
  (`MemRange.frames`, a NumPy (nr, 4096) uint8 array).
- ``"tokens"``: every page (RAM, device-coherent ranges, a GPU's VRAM) holds
  one u64 token, 8 bytes of host memory per page, so a Kernel with tens of
  GiBs of modelled RAM fits in a small host.

Semantics of a token page (exact, and the same wherever page contents are
read, written, copied or zeroed):

- Its content is the token as 8 little-endian bytes at offset 0, followed by
  4088 zero bytes. Every load of any bytes of it returns exactly those
  bytes. A zeroed page (clear_page, __GFP_ZERO, the zero page, a hole
  migrated to a device) is token 0.
- A store whose result keeps bytes 8..4095 of every page it touches zero
  updates those pages' tokens (bytes 0..7, any of them). Any other store
  raises `TokenPlaneError` and changes nothing: the check is made on the
  whole store before any page changes (`Process.store` checks the user
  buffer before it faults a page in).
- Copies (COW, migration both ways, khugepaged collapse, hugetlb, a
  driver's device copies) copy tokens; they cannot fail.
- Page-table pages are not data pages: their 512 u64 words live in a table
  store of their own (`TableWords`), allocated when the page becomes a
  table (pagetable_alloc) and released when it stops being one
  (pagetable_free); a data view of a table page reads its unused token, 0.

`TokenPages` is the NumPy-like view that stands where a frame array stands
in byte mode: `r.frames[pfn]` (one page, shape (4096,)), `r.frames[a:b]`
and `r.frames[idx]` (several, shape (m, 4096)), with column keys,
`[...] = ` stores (a bytes array, a scalar, or another `TokenPages`, which
copies tokens without materialising bytes), `np.asarray`, `.tobytes()`,
`.take()`. Reads with a column key return read-only NumPy copies, so a
write through a view is an error, never a silently lost store.
"""

from __future__ import annotations

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.kconfig import PAGE_SIZE

#: The KConfig.data_plane values.
DATA_PLANES = ("bytes", "tokens")
#: Bytes of a page that a token page may hold non-zero.
TOKEN_BYTES = 8

_U8 = np.uint8
_LE64 = np.dtype("<u8")


class TokenPlaneError(ValueError):
    """A store that a token page cannot hold: it would make a byte at page
    offset 8 or above non-zero. Nothing was changed."""


def _is_int(x) -> bool:
    t = type(x)
    return t is int or (t is not bool and isinstance(x, (int, np.integer)))


def _ix(rows):
    """rows (int, range, or int64 array) as a NumPy index of the token array."""
    if isinstance(rows, range):
        if rows.step > 0:
            return slice(rows.start, rows.stop, rows.step)
        return np.asarray(rows, dtype=np.int64)
    return rows


def _resolve(base, key, where: str):
    """Index `base` (a range or an int64 array of token positions) with a
    NumPy row key: an int, a slice, a bool mask or an integer array."""
    if _is_int(key):
        try:
            return int(base[int(key)])
        except IndexError:
            raise IndexError(f"index {int(key)} is out of bounds for {where}") from None
    if isinstance(key, slice):
        return base[key]
    if key is Ellipsis:
        return base
    arr = np.asarray(key)
    n = len(base)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} does not match {where}")
        arr = np.flatnonzero(arr)
    elif arr.dtype.kind not in "iu":
        raise IndexError(f"only integers, slices and integer or boolean arrays index {where}")
    arr = arr.astype(np.int64).reshape(-1) if arr.ndim != 1 else arr.astype(np.int64)
    arr = np.where(arr < 0, arr + n, arr)
    if len(arr) and (int(arr.min()) < 0 or int(arr.max()) >= n):
        raise IndexError(f"index out of bounds for {where} of {n} pages")
    if isinstance(base, range):
        return base.start + base.step * arr
    return base[arr]


def _cols(key):
    """A column key as (start, stop) when it is a contiguous slice, else None."""
    if key is Ellipsis:
        return 0, PAGE_SIZE
    if isinstance(key, slice):
        start, stop, step = key.indices(PAGE_SIZE)
        if step == 1:
            return start, max(start, stop)
    return None


class TokenPages:
    """A NumPy-like uint8 view of token pages (see the module docstring).

    Fields: tokens (the u64 array the pages live in); rows (an int: one page,
    shape (4096,); or a range / int64 array of positions in tokens: shape
    (m, 4096)).
    """

    __slots__ = ("tokens", "rows")

    dtype = np.dtype(np.uint8)

    def __init__(self, tokens: np.ndarray, rows=None) -> None:
        self.tokens = tokens
        self.rows = range(len(tokens)) if rows is None else rows

    # --- shape ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        if _is_int(self.rows):
            return (PAGE_SIZE,)
        return (len(self.rows), PAGE_SIZE)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<TokenPages shape={self.shape}>"

    # --- tokens -----------------------------------------------------------------------
    def token_values(self) -> np.ndarray:
        """The tokens of these pages (a copy: a 0-d array for one page)."""
        return np.array(self.tokens[_ix(self.rows)], dtype=np.uint64, copy=True)

    def _token_bytes(self) -> np.ndarray:
        """The tokens as (..., 8) little-endian bytes (a copy)."""
        t = self.token_values().astype(_LE64)
        return t.reshape(t.shape + (1,)).view(_U8)

    def _put_token_bytes(self, tb: np.ndarray) -> None:
        v = np.ascontiguousarray(tb, dtype=_U8).view(_LE64)[..., 0]
        self.tokens[_ix(self.rows)] = v

    # --- reads --------------------------------------------------------------------------
    def materialize(self) -> np.ndarray:
        """The bytes of these pages as a new NumPy array."""
        tb = self._token_bytes()
        out = np.zeros(tb.shape[:-1] + (PAGE_SIZE,), dtype=_U8)
        out[..., :TOKEN_BYTES] = tb
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.materialize()
        return out if dtype is None else out.astype(dtype)

    def tobytes(self) -> bytes:
        return self.materialize().tobytes()

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def any(self) -> bool:
        return bool(np.any(self.token_values()))

    def copy(self) -> np.ndarray:
        return self.materialize()

    def take(self, indices, axis=0, out=None, mode="raise"):
        """np.take along the page axis (2-D views only)."""
        if axis != 0 or _is_int(self.rows):
            return np.take(self.materialize(), indices, axis=axis, out=out, mode=mode)
        idx = np.asarray(indices, dtype=np.int64)
        if mode == "clip":
            idx = np.clip(idx, 0, len(self) - 1)
        got = TokenPages(self.tokens, _resolve(self.rows, idx, "token pages")).materialize()
        if out is None:
            return got
        out[...] = got
        return out

    def _sub(self, rkey) -> TokenPages:
        return TokenPages(self.tokens, _resolve(self.rows, rkey, "token pages"))

    def _split(self, key):
        """(rows key, column key or None) of a NumPy index."""
        if _is_int(self.rows):
            return None, key
        if isinstance(key, tuple):
            if len(key) == 1:
                return key[0], None
            if len(key) == 2:
                col = key[1]
                if col is Ellipsis or (isinstance(col, slice) and col == slice(None)):
                    col = None
                return key[0], col
            raise IndexError(f"too many indices for token pages of shape {self.shape}")
        return key, None

    def __getitem__(self, key):
        rkey, ckey = self._split(key)
        view = self if rkey is None else self._sub(rkey)
        if ckey is None:
            return view
        # a column read: a read-only copy (only the token bytes are looked at
        # when the columns are one contiguous slice)
        span = _cols(ckey)
        if span is None:
            out = view.materialize()[..., ckey]
        else:
            start, stop = span
            tb = view._token_bytes()
            out = np.zeros(tb.shape[:-1] + (stop - start,), dtype=_U8)
            if start < TOKEN_BYTES:
                hi = min(stop, TOKEN_BYTES)
                out[..., : hi - start] = tb[..., start:hi]
        if isinstance(out, np.ndarray):
            out.flags.writeable = False
        return out

    def __eq__(self, other):
        return np.asarray(self) == (np.asarray(other) if isinstance(other, TokenPages) else other)

    def __ne__(self, other):
        return np.asarray(self) != (np.asarray(other) if isinstance(other, TokenPages) else other)

    __hash__ = None

    # --- stores -------------------------------------------------------------------------
    def __setitem__(self, key, value) -> None:
        rkey, ckey = self._split(key)
        view = self if rkey is None else self._sub(rkey)
        view._store(ckey, value)

    def _store(self, ckey, value) -> None:
        shape = self.shape
        span = (0, PAGE_SIZE) if ckey is None else _cols(ckey)
        if span == (0, PAGE_SIZE) and isinstance(value, TokenPages):
            # a page copy: tokens to tokens (the source read before any store)
            src = value.token_values()
            dst_shape = shape[:-1]
            if src.shape != dst_shape:
                try:
                    src = np.broadcast_to(src, dst_shape)
                except ValueError:
                    raise ValueError(
                        f"could not broadcast token pages of shape {value.shape} into shape {shape}"
                    ) from None
            self.tokens[_ix(self.rows)] = src
            return
        if span is None:
            # an arbitrary column key: the store on a byte copy, then checked
            cur = self.materialize()
            cur[..., ckey] = np.asarray(value) if isinstance(value, TokenPages) else value
            if cur[..., TOKEN_BYTES:].any():
                raise _refused(cur[..., TOKEN_BYTES:])
            self._put_token_bytes(cur[..., :TOKEN_BYTES])
            return
        start, stop = span
        width = stop - start
        if isinstance(value, TokenPages):
            value = value.materialize()
        val = value if isinstance(value, np.ndarray) and value.dtype == _U8 else None
        if val is None:
            # NumPy's own casting rules into uint8 (as a byte frame would apply)
            tgt = np.empty(np.broadcast_shapes(np.shape(value), shape[:-1] + (width,)), dtype=_U8)
            tgt[...] = value
            val = tgt
        try:
            val = np.broadcast_to(val, shape[:-1] + (width,))
        except ValueError:
            raise ValueError(
                f"could not broadcast input array from shape {np.shape(value)} into shape "
                f"{shape[:-1] + (width,)}"
            ) from None
        over = max(0, TOKEN_BYTES - start)
        if val[..., over:].any():
            raise _refused(val[..., over:], start + over)
        if start >= TOKEN_BYTES or not width:
            return  # zeros over zeros: nothing changes
        hi = min(stop, TOKEN_BYTES)
        tb = self._token_bytes()
        tb[..., start:hi] = val[..., : hi - start]
        self._put_token_bytes(tb)


def _refused(tail: np.ndarray, first: int = TOKEN_BYTES) -> TokenPlaneError:
    """The error for a store that leaves non-zero bytes in `tail` (the bytes
    from page offset `first` on)."""
    flat = np.flatnonzero(tail.reshape(-1, tail.shape[-1]).any(axis=0))
    off = first + int(flat[0]) if len(flat) else first
    return TokenPlaneError(
        f"token data plane: a store would make byte {off} of a page non-zero; a token page "
        f"holds bytes 0..{TOKEN_BYTES - 1} only (use data_plane='bytes' for arbitrary data)"
    )


def frames_array(plane: str, nr: int):
    """Storage for nr pages: a (nr, 4096) uint8 array (bytes) or TokenPages."""
    if plane == "tokens":
        return TokenPages(np.zeros(nr, dtype=np.uint64))
    return np.zeros((nr, PAGE_SIZE), dtype=np.uint8)


def check_store_tokens(addr: int, buf: np.ndarray) -> None:
    """Raise TokenPlaneError if storing buf (uint8) at virtual address addr
    would make a byte at a page offset >= 8 non-zero (checked on the whole
    buffer before anything is stored)."""
    n = buf.size
    off = addr % PAGE_SIZE
    head = min(n, (PAGE_SIZE - off) % PAGE_SIZE)  # the bytes before the first page boundary
    bad = off >= TOKEN_BYTES and buf[:head].any() or buf[max(0, TOKEN_BYTES - off) : head].any()
    m = (n - head) // PAGE_SIZE
    body = buf[head : head + m * PAGE_SIZE].reshape(m, PAGE_SIZE)
    bad = bad or body[:, TOKEN_BYTES:].any() or buf[head + m * PAGE_SIZE + TOKEN_BYTES :].any()
    if not bad:
        return
    pages = (off + np.arange(n, dtype=np.int64)) % PAGE_SIZE >= TOKEN_BYTES
    pos = int(np.flatnonzero(pages & (buf != 0))[0])
    raise TokenPlaneError(
        f"token data plane: storing {n} bytes at {addr:#x} would make byte "
        f"{(addr + pos) % PAGE_SIZE} of the page at {(addr + pos) & ~(PAGE_SIZE - 1):#x} "
        f"non-zero; a token page holds bytes 0..{TOKEN_BYTES - 1} only"
    )


class TableWords:
    """The 512 u64 words of each page-table page of a token-plane RAM range.

    Indexing is `ram.words`'s in byte mode: words[pfn] (the table's 512
    words, a writable view that stays valid), words[pfn, i], words[pfn,
    i:j], words[pfn_array, col] (gathered), and the same in stores. A pfn
    that is not a table page is a KernelBug: in token mode only tables
    have words. Rows are handed out in fixed blocks that never move, so a
    view taken before another table is allocated stays the table's memory.
    """

    __slots__ = ("_row", "_blocks", "_free")

    BLOCK = 64

    def __init__(self) -> None:
        self._row: dict[int, np.ndarray] = {}
        self._blocks: list[np.ndarray] = []
        self._free: list[np.ndarray] = []

    def attach(self, pfn: int) -> None:
        """Give table page pfn its (zeroed) words."""
        if pfn in self._row:
            raise KernelBug(f"token data plane: pfn {pfn:#x} is a page table already")
        if not self._free:
            blk = np.zeros((self.BLOCK, PAGE_SIZE // 8), dtype=np.uint64)
            self._blocks.append(blk)
            self._free.extend(blk[i] for i in range(self.BLOCK - 1, -1, -1))
        row = self._free.pop()
        row[:] = 0
        self._row[pfn] = row

    def detach(self, pfn: int) -> None:
        """Release table page pfn's words (it is a data page again, token 0)."""
        self._free.append(self._row.pop(pfn))

    def __contains__(self, pfn) -> bool:
        return int(pfn) in self._row

    def __len__(self) -> int:
        return len(self._row)

    def row(self, pfn: int) -> np.ndarray:
        try:
            return self._row[pfn]
        except KeyError:
            raise KernelBug(
                f"token data plane: pfn {pfn:#x} is not a page table (only tables have words)"
            ) from None

    def __getitem__(self, key):
        if type(key) is tuple:
            p, col = key
            if type(p) is int:  # a ptep_get: the hot path
                row = self._row.get(p)
                if row is not None:
                    return row[col]
            if _is_int(p):
                return self.row(int(p))[col]
            p = np.asarray(p, dtype=np.int64)
            cols = np.broadcast_to(np.asarray(col), p.shape)
            out = np.empty(p.shape, dtype=np.uint64)
            for j, (pf, c) in enumerate(zip(p.tolist(), cols.tolist(), strict=True)):
                out[j] = self.row(pf)[c]
            return out
        if _is_int(key):
            return self.row(int(key))
        p = np.asarray(key, dtype=np.int64)
        if not len(p):
            return np.zeros((0, PAGE_SIZE // 8), dtype=np.uint64)
        return np.stack([self.row(pf) for pf in p.tolist()])

    def __setitem__(self, key, value) -> None:
        if type(key) is tuple:
            p, col = key
            if type(p) is int:  # a set_pte_at: the hot path
                row = self._row.get(p)
                if row is not None:
                    row[col] = value
                    return
            if _is_int(p):
                self.row(int(p))[col] = value
                return
            p = np.asarray(p, dtype=np.int64)
            cols = np.broadcast_to(np.asarray(col), p.shape)
            vals = np.broadcast_to(np.asarray(value, dtype=np.uint64), p.shape)
            for pf, c, v in zip(p.tolist(), cols.tolist(), vals.tolist(), strict=True):
                self.row(pf)[c] = v
            return
        if _is_int(key):
            self.row(int(key))[...] = value
            return
        p = np.asarray(key, dtype=np.int64)
        vals = np.broadcast_to(np.asarray(value, dtype=np.uint64), (len(p), PAGE_SIZE // 8))
        for pf, v in zip(p.tolist(), vals, strict=True):
            self.row(pf)[:] = v
