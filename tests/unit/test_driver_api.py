"""The dmirror driver touches struct pages and pagemaps only through the
kernel's driver API, and declares its state.

A real driver (lib/test_hmm.c) changes a struct page only through the
helpers it may call (zone_device_folio_init, folio_get/folio_put,
folio_lock/folio_unlock, folio_set_count, folio_reset_order,
clear_compound_head ...) and page->zone_device_data, which belongs to the
driver; it never reaches into a dev_pagemap's internals (the model's
_refs, _killed, _ranges, _chunk, _id stand for the percpu_ref, the xarray
and container_of). These tests parse drivers/ (test_hmm/ and gpu.py) with `ast` and fail
on a direct store into a struct page column other than zone_device_data,
or on any access to a private dev_pagemap attribute. The one exception is
the C's own: dmirror_devmem_folio_split writes the new tail folio's
->mapping and ->pgmap and the backing folio's ->mapping itself.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np

import hmmsim.drivers.test_hmm as th
import hmmsim.fast.test_hmm as ft
from hmmsim.include.memremap import dev_pagemap
from hmmsim.include.mm_types import PAGE_FIELDS

DRIVER = Path(th.__file__).parent
DRIVERS = DRIVER.parent

#: struct page columns (include/mm_types.PageArrays)
COLUMNS = frozenset(name for name, _ in PAGE_FIELDS)
#: what a driver may store into directly, and where
ALLOWED_STORES = {
    "zone_device_data": None,  # anywhere: the driver's own field
    "mapping": {"dmirror_devmem_folio_split"},  # as lib/test_hmm.c does
    "pgmap": {"dmirror_devmem_folio_split"},
}
#: the model-only dev_pagemap fields (include/memremap.dev_pagemap)
PGMAP_PRIVATE = frozenset(f.name for f in dataclasses.fields(dev_pagemap) if f.name.startswith("_"))


def violations(source: str, filename: str = "<src>") -> list[str]:
    """The driver-API violations in one module's source."""
    tree = ast.parse(source, filename)
    out: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{filename}:{node.lineno}"

    def visit(node: ast.AST, func: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if (
                    isinstance(sub, ast.Subscript)
                    and isinstance(sub.value, ast.Attribute)
                    and sub.value.attr in COLUMNS
                ):
                    col = sub.value.attr
                    allowed = ALLOWED_STORES.get(col, set())
                    if col in ALLOWED_STORES and (allowed is None or func in allowed):
                        continue
                    out.append(f"{where(sub)}: {func}() stores struct page field {col!r}")
        if isinstance(node, ast.Attribute) and node.attr in PGMAP_PRIVATE:
            out.append(f"{where(node)}: {func}() uses private dev_pagemap field {node.attr!r}")
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return out


def test_the_checker_sees_direct_stores_and_private_pagemap_fields():
    src = """
def drv(page, a, i, pgmap, chunk):
    a._refcount[i] = 1
    page.a.flags[page.i] |= 8
    a.order[i:i + 4] = 0
    pgmap._refs += 1
    chunk = pgmap._chunk
    page.a.zone_device_data[page.i] = 5
    page.a.mapping[page.i] = 0
"""
    found = violations(src)
    assert len(found) == 6, found
    assert any("'_refcount'" in v for v in found)
    assert any("'_chunk'" in v for v in found)
    assert not any("zone_device_data" in v for v in found)


def test_the_drivers_use_only_the_driver_api():
    files = sorted(DRIVERS.rglob("*.py"))
    names = {str(f.relative_to(DRIVERS)) for f in files}
    assert names >= {"gpu.py", "test_hmm/devmem.py", "test_hmm/mirror.py", "test_hmm/migrate.py"}
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(DRIVERS)))]
    assert found == []


def test_fast_layer_tag_matches_the_driver():
    assert ft.DPT_XA_TAG_WRITE == th.DPT_XA_TAG_WRITE


def test_driver_objects_declare_their_state():
    """Every driver object is slotted: no attribute can appear at run time."""
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd
    from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
    from hmmsim.kconfig import PAGE_SIZE
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config

    k = make_kernel(selftest_config())
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0")
    n = 16
    addr = p.mmap(0, n * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    p.store(addr, np.ones(n * PAGE_SIZE, dtype=np.uint8))
    buf = np.zeros(n * PAGE_SIZE, dtype=np.uint8)
    cmd = hmm_dmirror_cmd(addr=addr, ptr=buf, npages=n)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
    assert p.load(addr, n * PAGE_SIZE) == bytes([1]) * (n * PAGE_SIZE)  # migrate_to_ram
    mdev = k.devices["/dev/hmm_dmirror0"]
    d = p.fds[fd].private
    objects = [mdev, d, d.pt, mdev.free_pages, mdev.free_folios, *mdev.devmem_chunks]
    objects.append(th.dmirror_bounce(0, PAGE_SIZE, mdev))
    objects.append(ft.FrameCopies(mdev))
    for obj in objects:
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    for cls in (th.dmirror_device, th.dmirror):
        for base in cls.__mro__[:-1]:
            assert "__slots__" in vars(base), base.__name__
