"""Data patterns, page hashes and run-length encoding of the scenario language.

Defined in docs/scenarios.md ("Data patterns and hashes"); the C runner
(src/hmmsim/oracle/runner.c) computes the same values. All arithmetic is
modulo 2^64, done with NumPy uint64 arrays (which wrap).
"""

from __future__ import annotations

import numpy as np

PAGE_SIZE = 4096
WORDS_PER_PAGE = PAGE_SIZE // 8
GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(GOLDEN)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
#: w * GOLDEN for w in 0..511, the per-word salt of pagehash.
_SALT = np.arange(WORDS_PER_PAGE, dtype=np.uint64) * _GOLDEN
#: byte offsets of the words of a page
_OFFS = np.arange(WORDS_PER_PAGE, dtype=np.uint64) * np.uint64(8)

_U64 = (1 << 64) - 1


def mix64_array(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of every element of a uint64 array."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)


def mix64(x: int) -> int:
    """mix64 of one integer (taken modulo 2^64)."""
    return int(mix64_array(np.array([x & _U64], dtype=np.uint64))[0])


def pat(seed: int, va: int) -> int:
    """The u64 a `store` with `seed` writes at the 8-aligned address va."""
    return mix64((((seed & 0xFFFF) << 48) ^ va) & _U64)


def pat_page(seed: int, page_va: int) -> np.ndarray:
    """The 512 words of pat(seed, va) for the page at page_va, as uint64."""
    base = np.uint64((((seed & 0xFFFF) << 48) ^ page_va) & _U64)
    # page_va is page aligned and off < 4096, so page_va + off == page_va ^ off
    return mix64_array(base ^ _OFFS)


def pat_pages(seed: int, va: int, npages: int) -> bytes:
    """The bytes a `store` of npages pages from va writes (little-endian)."""
    out = np.empty(npages * WORDS_PER_PAGE, dtype="<u8")
    for i in range(npages):
        out[i * WORDS_PER_PAGE : (i + 1) * WORDS_PER_PAGE] = pat_page(seed, va + i * PAGE_SIZE)
    return out.tobytes()


def pagehash(page: bytes | np.ndarray) -> str:
    """`z` for an all-zero page, else the low 32 bits of the word hash as 8 hex digits."""
    words = np.frombuffer(bytes(page), dtype="<u8").astype(np.uint64)
    if words.size != WORDS_PER_PAGE:
        raise ValueError(f"pagehash needs {PAGE_SIZE} bytes, got {words.size * 8}")
    if not words.any():
        return "z"
    with np.errstate(over="ignore"):
        total = mix64_array(words ^ _SALT).sum(dtype=np.uint64)
    return f"{int(total) & 0xFFFFFFFF:08x}"


def rle(tokens: list[str]) -> str:
    """Runs of n >= 2 equal tokens as `tok*n`, joined by `,`; `-` for none."""
    if not tokens:
        return "-"
    out: list[str] = []
    prev, n = tokens[0], 1
    for t in tokens[1:]:
        if t == prev:
            n += 1
            continue
        out.append(prev if n == 1 else f"{prev}*{n}")
        prev, n = t, 1
    out.append(prev if n == 1 else f"{prev}*{n}")
    return ",".join(out)


def rle_bytes(raw: bytes) -> str:
    """rle() of the bytes as 2-digit lowercase hex tokens (one NumPy pass for long runs)."""
    a = np.frombuffer(bytes(raw), dtype=np.uint8)
    if a.size == 0:
        return "-"
    starts = np.concatenate(([0], np.flatnonzero(a[1:] != a[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [a.size])))
    out = []
    for v, n in zip(a[starts].tolist(), lengths.tolist(), strict=True):
        out.append(f"{v:02x}" if n == 1 else f"{v:02x}*{n}")
    return ",".join(out)
