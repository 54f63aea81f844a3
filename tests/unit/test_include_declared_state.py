"""Declared state: the structs of include/ have a fixed set of fields.

Every struct that include/ defines as a dataclass has slots, so a field that
is not declared cannot be added at run time (a typo, or state patched onto a
kernel object from outside); vm_area_struct, vm_fault, Page and PageArrays
and mm_struct declare __slots__ by hand.
"""

from __future__ import annotations

import dataclasses

import pytest

from hmmsim.include.hmm import hmm_range
from hmmsim.include.memremap import dev_pagemap, dev_pagemap_ops, range, vmem_altmap
from hmmsim.include.migrate import migrate_vma
from hmmsim.include.mm_types import Page, PageArrays, mm_struct, vm_area_struct, vm_fault
from hmmsim.include.mmu_notifier import mmu_notifier_range

DATACLASSES = [
    hmm_range,
    dev_pagemap,
    dev_pagemap_ops,
    range,
    vmem_altmap,
    migrate_vma,
    mmu_notifier_range,
]


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_dataclass_structs_refuse_undeclared_fields(cls):
    obj = cls()
    with pytest.raises(AttributeError):
        obj.not_a_field = 1  # type: ignore[attr-defined]
    # every declared field can be set
    for f in dataclasses.fields(cls):
        setattr(obj, f.name, getattr(obj, f.name))


@pytest.mark.parametrize("cls", [Page, PageArrays, vm_area_struct, vm_fault, mm_struct])
def test_hand_written_structs_have_slots(cls):
    # no instance __dict__ anywhere in the class hierarchy
    assert "__slots__" in vars(cls) and "__dict__" not in dir(cls)


def test_dev_pagemap_model_fields_are_declared():
    pgmap = dev_pagemap()
    assert (pgmap._id, pgmap._refs, pgmap._killed, pgmap._ranges) == (None, 0, False, [])
    assert pgmap._chunk is None
    # the batched folio_free is an (optional, model-only) op, not a pgmap field
    assert pgmap.ops is None or pgmap.ops.folio_free_bulk is None
    assert not hasattr(pgmap, "_folio_free_bulk")
    # the C union still holds: ranges[0] is range
    assert pgmap.ranges[0] is pgmap.range
