"""include/memremap.py: enum memory_type, PGMAP_*, struct dev_pagemap(_ops)."""

import dataclasses

from hmmsim.include.memremap import (
    MEMORY_DEVICE_COHERENT,
    MEMORY_DEVICE_PRIVATE,
    PGMAP_ALTMAP_VALID,
    PGMAP_VMEMMAP_OPTIMIZATION,
    dev_pagemap,
    dev_pagemap_ops,
    memory_type,
    pgmap_altmap,
    pgmap_has_memory_failure,
    pgmap_vmemmap_nr,
    range,  # the kernel's struct range (shadows the builtin in this file)
    range_len,
    vmem_altmap,
)


def test_memory_type_values():
    assert [(m.name, m.value) for m in memory_type] == [
        ("MEMORY_DEVICE_PRIVATE", 1),
        ("MEMORY_DEVICE_COHERENT", 2),
        ("MEMORY_DEVICE_FS_DAX", 3),
        ("MEMORY_DEVICE_GENERIC", 4),
        ("MEMORY_DEVICE_PCI_P2PDMA", 5),
    ]
    assert 0 not in memory_type._value2member_map_  # reserved: uninitialised pgmap


def test_pgmap_flags():
    assert (PGMAP_ALTMAP_VALID, PGMAP_VMEMMAP_OPTIMIZATION) == (1, 2)


def test_field_order():
    # the kernel's fields in the kernel's order; the model's own (leading "_") follow
    names = [f.name for f in dataclasses.fields(dev_pagemap)]
    kernel = [n for n in names if not n.startswith("_")]
    assert names[: len(kernel)] == kernel
    assert kernel == [
        "altmap",
        "ref",
        "done",
        "type",
        "flags",
        "vmemmap_shift",
        "vmemmap_shared_page",
        "ops",
        "owner",
        "nr_range",
        "nr_pages",  # series (c)
        "pages",  # series (c)
        "range",
        "ranges",
    ]
    assert [f.name for f in dataclasses.fields(dev_pagemap_ops)] == [
        "folio_free",
        "migrate_to_ram",
        "memory_failure",
        "folio_split",
        "folio_free_bulk",  # model-only: the batched folio_free of the fast layer
    ]
    assert [f.name for f in dataclasses.fields(vmem_altmap)] == [
        "base_pfn",
        "end_pfn",
        "reserve",
        "free",
        "align",
        "alloc",
    ]


def test_range_is_inclusive():
    r = range(0x1000, 0x1FFF)
    assert range_len(r) == len(r) == 0x1000
    assert range_len(range()) == 0
    assert repr(r) == "<range [0x1000-0x1fff]>"


def test_ranges_alias_range_like_the_union():
    p = dev_pagemap(type=MEMORY_DEVICE_PRIVATE, owner="dev0")
    assert p.ranges[0] is p.range and p.nr_range == 1
    p.range.start, p.range.end = 0x10_0000, 0x1F_FFFF
    assert p.ranges[0].end == 0x1F_FFFF
    two = dev_pagemap(nr_range=2, ranges=[range(0, 0xFFF), range(0x2000, 0x2FFF)])
    assert two.range is two.ranges[0]
    assert repr(p) == "<dev_pagemap MEMORY_DEVICE_PRIVATE [0x100000-0x1fffff] owner='dev0'>"
    assert repr(dev_pagemap()) == "<dev_pagemap 0 [0x0--0x1] owner=None>"


def test_inline_helpers():
    p = dev_pagemap(type=MEMORY_DEVICE_COHERENT, vmemmap_shift=9)
    assert pgmap_vmemmap_nr(p) == 512
    assert pgmap_altmap(p) is None
    p.flags |= PGMAP_ALTMAP_VALID
    assert pgmap_altmap(p) is p.altmap
    assert not pgmap_has_memory_failure(p)
    p.ops = dev_pagemap_ops(memory_failure=lambda *a: 0)
    assert pgmap_has_memory_failure(p)
