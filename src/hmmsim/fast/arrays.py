"""NumPy helpers the fast layer shares (not kernel code).

`busy_slots` lists the slots of a migrate window that hold something;
`has_duplicates` and `distinct_values` guard and group the runs a fast
function handles; `slot_words` and `store_slots` read and write the slots of
a migrate src/dst array (a driver's list or a NumPy array) as the per-slot
loop would.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

#: a migrate src/dst array: a driver's list of unsigned longs or a NumPy array
SlotArray: TypeAlias = list[int] | NDArray[Any]


def busy_slots(npages: int, *arrays: SlotArray) -> list[int]:
    """Indices < npages where any array is non-zero, in order.

    Every phase of a migration after collect does nothing for a slot whose
    src and dst are both 0, so the loops over a window (eviction over a whole
    256 MiB chunk) visit only the busy slots. Same result as the per-slot
    loop.
    """
    # a driver's unsigned long[]: compress() walks the list in C (a THP
    # window is one busy slot in 512)
    # (range(npages) bounds compress(), so the lists need no slicing)
    slots = range(npages)
    if len(arrays) == 1 and type(arrays[0]) is list:
        return list(compress(slots, arrays[0]))
    if len(arrays) == 2 and type(arrays[0]) is list and type(arrays[1]) is list:
        a, b = arrays
        if min(len(a), npages) != min(len(b), npages):
            raise ValueError("src and dst differ in length")
        busy_a = list(compress(slots, a))
        if len(busy_a) == npages:
            return busy_a  # every slot (a window of 4 KiB pages)
        busy_b = list(compress(slots, b))
        if busy_b == busy_a or not busy_b:
            return busy_a  # dst busy where src is (or nowhere): the usual windows
        if not busy_a:
            return busy_b
        return sorted(set(busy_a).union(busy_b))
    mask: NDArray[np.bool_] | None = None
    for arr in arrays:
        m: NDArray[np.bool_] = np.asarray(arr[:npages]) != 0
        mask = m if mask is None else (mask | m)
    if mask is None:
        return []
    busy: list[int] = np.flatnonzero(mask).tolist()
    return busy


def has_duplicates(values: NDArray[Any]) -> bool:
    """Whether an integer array holds some value twice (the bulk passes'
    guard; a sort is several times cheaper than np.unique for window-sized
    arrays)."""
    if len(values) < 2:
        return False
    s = np.sort(values)
    return bool((s[1:] == s[:-1]).any())


def distinct_values(values: NDArray[Any]) -> list[int]:
    """The distinct values of a non-empty integer array, ascending, as ints
    (np.unique, but a window whose values are all one, the common case,
    costs one comparison)."""
    v0 = values[0]
    if (values == v0).all():
        return [int(v0)]
    return [int(v) for v in np.unique(values).tolist()]


def sliceable(arr: object) -> bool:
    """A src/dst array that takes slice stores: a list or a 1-D NumPy array."""
    return isinstance(arr, list) or isinstance(arr, np.ndarray) and arr.ndim == 1


def slot_words(arr: SlotArray, busy: Sequence[int]) -> NDArray[np.uint64]:
    """The words of slots `busy` (sorted, distinct) of a src/dst array, as uint64."""
    if isinstance(arr, np.ndarray):
        return arr[np.asarray(busy, dtype=np.int64)].astype(np.uint64)
    if busy and busy[-1] - busy[0] == len(busy) - 1:  # every slot of a run is busy
        return np.array(arr[busy[0] : busy[-1] + 1], dtype=np.uint64)
    return np.fromiter(map(arr.__getitem__, busy), dtype=np.uint64, count=len(busy))


def store_collected_run(src: SlotArray, dst: SlotArray, lo: int, out: NDArray[Any]) -> None:
    """What collect leaves in a run of slots from lo: src[lo + j] = out[j] and
    dst[lo + j] = 0 (migrate_vma_collect_pte's stores), as two slice stores on
    a list or an array."""
    run = len(out)
    if isinstance(src, list):
        src[lo : lo + run] = out.tolist()
    else:
        src[lo : lo + run] = out
    if isinstance(dst, list):
        dst[lo : lo + run] = [0] * run
    else:
        dst[lo : lo + run] = 0


def store_slots(
    arr: SlotArray, slots: Sequence[int] | NDArray[Any], words: Sequence[int] | NDArray[Any]
) -> None:
    """arr[slots[j]] = words[j] for sorted, distinct slots (a src/dst array).

    The same stores as a loop: one slice when the slots are a run of a list,
    one fancy store for an array."""
    if isinstance(arr, np.ndarray):
        arr[np.asarray(slots, dtype=np.int64)] = words
        return
    slots = slots.tolist() if isinstance(slots, np.ndarray) else list(slots)
    words = words.tolist() if isinstance(words, np.ndarray) else list(words)
    if len(slots) != len(words):
        raise ValueError("store_slots: slots and words differ in length")
    if slots and type(arr) is list and slots[-1] - slots[0] == len(slots) - 1:
        arr[slots[0] : slots[-1] + 1] = words
        return
    for i, v in zip(slots, words, strict=True):
        arr[i] = v
