"""include/mmu_notifier.py: enum mmu_notifier_event and struct mmu_notifier_range."""

import dataclasses

from hmmsim.include.mmu_notifier import (
    MMU_NOTIFIER_RANGE_BLOCKABLE,
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_EXCLUSIVE,
    MMU_NOTIFY_MIGRATE,
    mmu_notifier_event,
    mmu_notifier_range,
    mmu_notifier_range_blockable,
    mmu_notifier_range_init,
    mmu_notifier_range_init_owner,
)


def test_event_values_in_declaration_order():
    assert [(e.name, e.value) for e in mmu_notifier_event] == [
        ("MMU_NOTIFY_UNMAP", 0),
        ("MMU_NOTIFY_CLEAR", 1),
        ("MMU_NOTIFY_PROTECTION_VMA", 2),
        ("MMU_NOTIFY_PROTECTION_PAGE", 3),
        ("MMU_NOTIFY_SOFT_DIRTY", 4),
        ("MMU_NOTIFY_RELEASE", 5),
        ("MMU_NOTIFY_MIGRATE", 6),
        ("MMU_NOTIFY_EXCLUSIVE", 7),
    ]
    assert MMU_NOTIFIER_RANGE_BLOCKABLE == 1


def test_range_fields_in_kernel_order():
    assert [f.name for f in dataclasses.fields(mmu_notifier_range)] == [
        "mm",
        "start",
        "end",
        "flags",
        "event",
        "owner",
    ]


def test_init_leaves_owner_alone_and_init_owner_sets_it():
    r = mmu_notifier_range()
    mmu_notifier_range_init_owner(r, MMU_NOTIFY_MIGRATE, 0, "mm", 0x1000, 0x3000, "dev")
    assert (r.event, r.flags, r.mm, r.start, r.end, r.owner) == (
        MMU_NOTIFY_MIGRATE,
        0,
        "mm",
        0x1000,
        0x3000,
        "dev",
    )
    assert not mmu_notifier_range_blockable(r)
    mmu_notifier_range_init(r, MMU_NOTIFY_CLEAR, MMU_NOTIFIER_RANGE_BLOCKABLE, "mm", 0, 0x1000)
    assert r.owner == "dev"  # the kernel's init does not touch owner
    assert mmu_notifier_range_blockable(r)


def test_repr():
    r = mmu_notifier_range(mm=None, start=0x1000, end=0x2000, flags=1, event=MMU_NOTIFY_EXCLUSIVE)
    assert repr(r) == (
        "<mmu_notifier_range MMU_NOTIFY_EXCLUSIVE [0x1000, 0x2000) blockable owner=None>"
    )
