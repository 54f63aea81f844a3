"""Workloads: seeded generators and trace import.

A ``Workload`` is a footprint (bytes of one anonymous buffer) and a
program-ordered array of accesses (``ACCESS_DTYPE``: agent 0 = CPU,
1 = GPU; byte offset into the buffer; write flag; size in bytes; time in ns,
or -1 when the trace gives none). A run of GPU accesses is one "kernel
launch"; a CPU access after GPU accesses waits for them (a synchronise).

Generators (``make_workload("stream:size=8M,passes=2")``), each seeded:

- stream: the CPU writes every page once, the GPU reads it sequentially
  ``passes`` times;
- random: the CPU initialises, the GPU makes ``n`` accesses at uniformly
  random pages (``write`` fraction of them writes);
- stencil: the GPU reads each page and its neighbours one row
  (``row`` bytes) above and below, and writes it, ``iters`` times;
- pingpong: ``rounds`` of a GPU pass over the buffer followed by CPU
  writes to a random ``cpu`` fraction of its pages.
- gemm: tiled matrix multiply over three matrices (tile loops, panel
  reuse), ``tile`` elements per tile side;
- graph: BFS frontier traversal of a seeded power-law graph in CSR.

Every generator takes ``size`` (the footprint) and ``oversub`` (footprint /
device memory: 1.5 means the device holds two thirds of the buffer; the
simulator sizes device memory from it unless --device-mem is given).

Trace import (``make_workload("path/to/trace.csv")`` or ``.jsonl``): one
access per row / line with the fields ``time`` (ns, optional), ``agent``
(``cpu`` or ``gpu``), ``address`` (decimal or 0x-hex virtual address),
``rw`` (``r`` or ``w``) and ``size`` (bytes, optional, default 4096). The
addresses are rebased onto one buffer spanning them (2 MiB aligned).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import numpy as np

from hmmsim.kconfig import PAGE_SIZE

ACCESS_DTYPE = np.dtype(
    [("agent", "u1"), ("off", "<u8"), ("write", "?"), ("size", "<u4"), ("time", "<f8")]
)
CPU, GPU = 0, 1
MAX_TRACE_FOOTPRINT = 1 << 34  # 16 GiB of modelled buffer (the byte data plane's limit)


class WorkloadError(ValueError):
    """A bad workload spec or trace (the CLI prints it on one line)."""


@dataclass
class Workload:
    name: str
    footprint: int
    accesses: np.ndarray
    oversub: float | None = None
    params: dict | None = None

    @property
    def npages(self) -> int:
        return (self.footprint + PAGE_SIZE - 1) // PAGE_SIZE

    def __repr__(self) -> str:
        return f"<Workload {self.name} {self.footprint >> 10} KiB, {len(self.accesses)} accesses>"


def _acc(agent, off, write, size=PAGE_SIZE) -> np.ndarray:
    off = np.asarray(off, dtype=np.uint64)
    a = np.zeros(len(off), dtype=ACCESS_DTYPE)
    a["agent"] = agent
    a["off"] = off
    a["write"] = write
    a["size"] = size
    a["time"] = -1
    return a


def _pages(size: int) -> np.ndarray:
    return np.arange(size // PAGE_SIZE, dtype=np.uint64) * PAGE_SIZE


def _split(a: np.ndarray, access: int) -> np.ndarray:
    """Each page access as PAGE_SIZE // access accesses of `access` bytes
    (the warps touching a page one after another: several fault entries per
    page, as a GPU's fault buffer sees them)."""
    access = int(access)
    if access <= 0 or access > PAGE_SIZE or PAGE_SIZE % access:
        raise WorkloadError(f"access={access}: must divide {PAGE_SIZE}")
    n = PAGE_SIZE // access
    if n == 1:
        return a
    out = np.repeat(a, n)
    out["off"] += np.tile(np.arange(n, dtype=np.uint64) * np.uint64(access), len(a))
    out["size"] = access
    return out


def gen_stream(
    size: int, passes: int = 1, access: int = 1024, init: int = 1, seed: int = 0
) -> np.ndarray:
    parts = [_acc(CPU, _pages(size), True)] if init else []
    parts += [_split(_acc(GPU, _pages(size), False), access) for _ in range(passes)]
    return np.concatenate(parts)


def gen_random(
    size: int, n: int = 0, write: float = 0.1, init: int = 1, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    npages = size // PAGE_SIZE
    n = n or 2 * npages
    pages = rng.integers(0, npages, size=n, dtype=np.uint64) * PAGE_SIZE
    g = _acc(GPU, pages, False)
    g["write"] = rng.random(n) < write
    parts = [_acc(CPU, _pages(size), True)] if init else []
    return np.concatenate([*parts, g])


def gen_stencil(
    size: int, iters: int = 2, row: int = 64 << 10, access: int = 4096, init: int = 1, seed: int = 0
):
    npages = size // PAGE_SIZE
    rp = max(1, row // PAGE_SIZE)
    idx = np.arange(npages, dtype=np.int64)
    one = []
    for d in (-rp, 0, rp):
        j = idx + d
        one.append(np.where((j >= 0) & (j < npages), j, idx))
    reads = np.stack(one, axis=1).reshape(-1)
    it = np.empty(npages * 4, dtype=ACCESS_DTYPE)
    it = it.reshape(npages, 4)
    r = _acc(GPU, reads.astype(np.uint64) * PAGE_SIZE, False).reshape(npages, 3)
    w = _acc(GPU, idx.astype(np.uint64) * PAGE_SIZE, True)
    it[:, :3] = r
    it[:, 3] = w
    it = _split(it.reshape(-1), access)
    parts = [_acc(CPU, _pages(size), True)] if init else []
    return np.concatenate([*parts] + [it] * iters)


def gen_pingpong(
    size: int, rounds: int = 4, cpu: float = 0.25, access: int = 1024, init: int = 1, seed: int = 0
):
    rng = np.random.default_rng(seed)
    npages = size // PAGE_SIZE
    parts = [_acc(CPU, _pages(size), True)] if init else []
    for _ in range(rounds):
        parts.append(_split(_acc(GPU, _pages(size), False), access))
        k = max(1, int(npages * cpu))
        pick = np.sort(rng.choice(npages, size=k, replace=False)).astype(np.uint64)
        parts.append(_acc(CPU, pick * PAGE_SIZE, True))
    return np.concatenate(parts)


def gen_gemm(
    size: int, tile: int = 128, elem: int = 4, init: int = 1, readback: int = 0, seed: int = 0
):
    """Tiled C = A x B: three n x n row-major matrices of `elem`-byte elements
    (A, B, C one after another, each page aligned; n the largest multiple of
    `tile` that fits a third of `size`). For each tile (i, j) of C, for each
    k, the GPU reads the `tile` rows of tile A(i, k) and of tile B(k, j) (one
    access per tile row, tile x elem bytes), then writes the rows of C(i, j):
    A's row panel and B's column panel are re-read n / tile times (reuse)."""
    tile, elem = int(tile), int(elem)
    if tile <= 0 or elem <= 0:
        raise WorkloadError("gemm: tile and elem must be positive")
    mat = size // 3 // PAGE_SIZE * PAGE_SIZE
    n = int(np.sqrt(mat // elem)) // tile * tile
    if n < tile:
        raise WorkloadError(f"gemm: size {size} is too small for one {tile} x {tile} tile")
    mbytes = (n * n * elem + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    a0, b0, c0 = 0, mbytes, 2 * mbytes
    nt = n // tile
    rows = np.arange(tile, dtype=np.uint64)
    row_bytes = np.uint64(n * elem)

    def tile_rows(base: int, ti: int, tj: int) -> np.ndarray:
        start = np.uint64(base) + np.uint64(ti * tile) * row_bytes + np.uint64(tj * tile * elem)
        return start + rows * row_bytes

    parts = []
    if init:
        parts.append(_acc(CPU, _pages(2 * mbytes), True))
    for i in range(nt):
        for j in range(nt):
            ks = []
            for k in range(nt):
                ks.append(tile_rows(a0, i, k))
                ks.append(tile_rows(b0, k, j))
            parts.append(_acc(GPU, np.concatenate(ks), False, tile * elem))
            parts.append(_acc(GPU, tile_rows(c0, i, j), True, tile * elem))
    if readback:
        parts.append(_acc(CPU, np.uint64(c0) + _pages(mbytes), False))
    return np.concatenate(parts)


def power_law_csr(nodes: int, degree: float, alpha: float, seed: int):
    """A seeded directed graph in CSR form (row_ptr, col_idx): out-degrees
    from a Pareto law of shape `alpha` scaled to mean `degree`, targets drawn
    with probability proportional to a Zipf weight (preferential, so
    in-degrees are power-law too); self loops kept, duplicates kept."""
    rng = np.random.default_rng(seed)
    raw = rng.pareto(alpha, nodes) + 1.0
    deg = np.maximum(1, np.round(raw * degree / raw.mean())).astype(np.int64)
    row_ptr = np.zeros(nodes + 1, dtype=np.int64)
    np.cumsum(deg, out=row_ptr[1:])
    w = 1.0 / np.arange(1, nodes + 1) ** (1.0 / alpha)
    perm = rng.permutation(nodes)
    col = perm[rng.choice(nodes, size=int(row_ptr[-1]), p=w / w.sum())]
    return row_ptr, col.astype(np.int64)


def gen_graph(
    size: int,
    degree: float = 8,
    alpha: float = 2.0,
    sources: int = 1,
    init: int = 1,
    seed: int = 0,
):
    """BFS over a seeded power-law graph in CSR (power_law_csr): row_ptr (8
    bytes per node), col_idx (4 bytes per edge) and dist (4 bytes per node),
    each page aligned, sized so the three fill `size`. Each BFS (from the
    highest-degree nodes, `sources` of them one after another) visits its
    frontier level by level; per frontier node the GPU reads its two row_ptr
    entries, its col_idx slice (one access per page it spans) and dist[v] of
    each neighbour, and writes dist[v] of each newly reached one: irregular,
    data-dependent accesses."""
    per_node = 8 + 4 * float(degree) + 4
    nodes = max(2, int(size / per_node * 0.95))
    row_ptr, col = power_law_csr(nodes, float(degree), float(alpha), seed)

    def up(x):
        return (x + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE

    rp0 = 0
    ci0 = up(8 * (nodes + 1))
    di0 = ci0 + up(4 * len(col))
    while di0 + 4 * nodes > size and nodes > 2:  # Pareto tails can overshoot
        nodes = int(nodes * 0.9)
        row_ptr, col = power_law_csr(nodes, float(degree), float(alpha), seed)
        ci0 = up(8 * (nodes + 1))
        di0 = ci0 + up(4 * len(col))
    offs: list[int] = []
    sizes: list[int] = []
    writes: list[bool] = []
    deg = np.diff(row_ptr)
    order = np.argsort(-deg, kind="stable")
    for src in order[: max(1, int(sources))].tolist():
        seen = np.zeros(nodes, dtype=bool)
        seen[src] = True
        offs.append(di0 + 4 * src)
        sizes.append(4)
        writes.append(True)
        frontier = [src]
        while frontier:
            nxt = []
            for u in frontier:
                offs.append(rp0 + 8 * u)
                sizes.append(16)
                writes.append(False)
                lo, hi = int(row_ptr[u]), int(row_ptr[u + 1])
                a, b = ci0 + 4 * lo, ci0 + 4 * hi
                while a < b:  # the col_idx slice, one access per page
                    e = min(b, (a // PAGE_SIZE + 1) * PAGE_SIZE)
                    offs.append(a)
                    sizes.append(e - a)
                    writes.append(False)
                    a = e
                for v in col[lo:hi].tolist():
                    offs.append(di0 + 4 * v)
                    sizes.append(4)
                    writes.append(False)
                    if not seen[v]:
                        seen[v] = True
                        nxt.append(v)
                        offs.append(di0 + 4 * v)
                        sizes.append(4)
                        writes.append(True)
            frontier = sorted(nxt)
    g = _acc(GPU, np.asarray(offs, dtype=np.uint64), False)
    g["write"] = writes
    g["size"] = sizes
    parts = [_acc(CPU, _pages(up(di0 + 4 * nodes)), True)] if init else []
    return np.concatenate([*parts, g])


#: name -> (function, default size, one-line description)
GENERATORS = {
    "stream": (gen_stream, 8 << 20, "CPU init, then GPU sequential reads (passes=N)"),
    "random": (gen_random, 8 << 20, "CPU init, then n GPU reads at random pages (write=fraction)"),
    "stencil": (gen_stencil, 8 << 20, "GPU 3-point stencil over rows of `row` bytes (iters=N)"),
    "pingpong": (gen_pingpong, 8 << 20, "GPU pass then CPU writes to a `cpu` fraction (rounds=N)"),
    "gemm": (gen_gemm, 12 << 20, "tiled C = A x B over three matrices (tile=N elements)"),
    "graph": (gen_graph, 1 << 20, "BFS over a seeded power-law graph in CSR (degree=, alpha=)"),
}


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        v = float(t) * mult
    except ValueError:
        raise WorkloadError(f"{text!r} is not a size like 8M or 1G") from None
    if v <= 0 or v != int(v):
        raise WorkloadError(f"{text!r} is not a positive whole number of bytes")
    return int(v)


def make_workload(spec: str, seed: int = 0) -> Workload:
    """A Workload from "NAME[:key=value,...]" or a .csv / .jsonl trace path."""
    low = spec.lower()
    if low.endswith(".csv") or low.endswith(".jsonl"):
        return load_trace(spec)
    name, _, rest = spec.partition(":")
    if name not in GENERATORS:
        raise WorkloadError(
            f"unknown workload {name!r}: choose one of {', '.join(GENERATORS)} "
            "or give a .csv/.jsonl trace"
        )
    fn, default_size, _ = GENERATORS[name]
    kv: dict = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise WorkloadError(f"{spec!r}: expected key=value, got {item!r}")
        kv[key.strip()] = value.strip()
    size = parse_size(kv.pop("size", default_size))
    size = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    oversub = kv.pop("oversub", None)
    if oversub is not None:
        try:
            oversub = float(oversub)
        except ValueError:
            raise WorkloadError(f"oversub={oversub!r} is not a number") from None
        if oversub <= 0:
            raise WorkloadError(f"oversub must be positive ({oversub})")
    import inspect

    allowed = set(inspect.signature(fn).parameters) - {"size"}
    args: dict = {"seed": seed}
    for key, value in kv.items():
        if key not in allowed:
            raise WorkloadError(
                f"{name}: unknown parameter {key!r} (known: size, oversub, "
                f"{', '.join(sorted(allowed))})"
            )
        try:
            args[key] = parse_size(value) if key in ("row", "access") else _number(value)
        except ValueError:
            raise WorkloadError(f"{name}: {key}={value!r} is not a number") from None
    accesses = fn(size, **args)
    return Workload(name, size, accesses, oversub, {"size": size, **args})


def _number(text: str):
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


# --- trace import --------------------------------------------------------------------------
def _rows_csv(path: str):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise WorkloadError(f"{path}: empty trace")
        missing = {"agent", "address", "rw"} - {h.strip() for h in reader.fieldnames}
        if missing:
            raise WorkloadError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for n, row in enumerate(reader, start=2):
            yield n, {k.strip(): (v or "").strip() for k, v in row.items() if k}


def _rows_jsonl(path: str):
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise WorkloadError(f"{path}:{n}: each line must be a JSON object")
            yield n, obj


def load_trace(path: str) -> Workload:
    rows = _rows_jsonl if path.lower().endswith(".jsonl") else _rows_csv
    agents, addrs, writes, sizes, times = [], [], [], [], []
    try:
        for n, row in rows(path):
            try:
                agent = str(row["agent"]).lower()
                addr = row["address"]
                rw = str(row["rw"]).lower()
            except KeyError as e:
                raise WorkloadError(f"{path}:{n}: missing field {e.args[0]!r}") from None
            if agent not in ("cpu", "gpu"):
                raise WorkloadError(f"{path}:{n}: agent must be cpu or gpu, not {agent!r}")
            if rw not in ("r", "w"):
                raise WorkloadError(f"{path}:{n}: rw must be r or w, not {rw!r}")
            try:
                a = int(addr, 0) if isinstance(addr, str) else int(addr)
                size = row.get("size", "") or PAGE_SIZE
                size = int(size, 0) if isinstance(size, str) else int(size)
                t = row.get("time", "")
                t = -1.0 if t in ("", None) else float(t)
            except (TypeError, ValueError):
                raise WorkloadError(f"{path}:{n}: address, size and time must be numbers") from None
            if a < 0 or size <= 0 or a + size > 1 << 47:
                raise WorkloadError(f"{path}:{n}: address/size outside a user address space")
            agents.append(GPU if agent == "gpu" else CPU)
            addrs.append(a)
            writes.append(rw == "w")
            sizes.append(size)
            times.append(t)
    except OSError as e:
        raise WorkloadError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise WorkloadError(f"{path}: not a text file") from None
    if not addrs:
        raise WorkloadError(f"{path}: no accesses")
    base = min(addrs) & ~((2 << 20) - 1)
    top = max(a + s for a, s in zip(addrs, sizes, strict=True))
    footprint = (top - base + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    if footprint > MAX_TRACE_FOOTPRINT:
        raise WorkloadError(
            f"{path}: the accesses span {footprint >> 20} MiB; at most "
            f"{MAX_TRACE_FOOTPRINT >> 20} MiB (the byte data plane)"
        )
    acc = np.zeros(len(addrs), dtype=ACCESS_DTYPE)
    acc["agent"] = agents
    acc["off"] = np.asarray(addrs, dtype=np.uint64) - np.uint64(base)
    acc["write"] = writes
    acc["size"] = sizes
    acc["time"] = times
    import os

    return Workload(os.path.basename(path), footprint, acc, None, {"trace": path, "base": base})
