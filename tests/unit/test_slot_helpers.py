"""The src/dst slot helpers of the bulk passes against one-slot-at-a-time loops.

`busy_slots` (as `_busy`), `slot_words`, `store_slots` and `distinct_values`
(fast/arrays.py) take shortcuts for the common shapes of a
migrate window (a driver's Python list, a run of busy slots, one value for the
whole window); each must give exactly what the plain loop gives.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmmsim.fast.arrays import busy_slots as _busy
from hmmsim.fast.arrays import distinct_values, slot_words, store_slots

WORD = st.integers(0, (1 << 64) - 1)
# mostly zeros, like a THP window (one busy slot in 512) or a sparse device range
SLOT = st.one_of(st.just(0), st.just(0), WORD)


@given(st.lists(SLOT, max_size=64), st.lists(SLOT, max_size=64), st.data())
def test_busy_matches_the_slot_loop(a, b, data):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    npages = data.draw(st.integers(0, n))
    assert _busy(npages, a) == [i for i in range(npages) if a[i]]
    assert _busy(npages, a, b) == [i for i in range(npages) if a[i] or b[i]]
    arr_a, arr_b = np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)
    assert _busy(npages, arr_a, arr_b) == _busy(npages, a, b)


def test_busy_refuses_src_and_dst_of_different_lengths():
    with pytest.raises(ValueError):
        _busy(4, [1, 0, 1, 0], [0, 1, 0])


@given(st.lists(WORD, min_size=1, max_size=64), st.data())
def test_slot_words_and_store_slots_match_the_slot_loop(words, data):
    n = len(words)
    slots = sorted(data.draw(st.sets(st.integers(0, n - 1))))
    if data.draw(st.booleans()) and n > 1:  # a run, the common case
        lo = data.draw(st.integers(0, n - 1))
        slots = list(range(lo, data.draw(st.integers(lo, n - 1)) + 1))
    want = [words[i] for i in slots]
    for arr in (list(words), np.array(words, dtype=np.uint64)):
        assert slot_words(arr, slots).tolist() == want
    new = data.draw(st.lists(WORD, min_size=len(slots), max_size=len(slots)))
    expect = list(words)
    for i, v in zip(slots, new, strict=True):
        expect[i] = v
    as_list = list(words)
    store_slots(as_list, np.array(slots, dtype=np.int64), np.array(new, dtype=np.uint64))
    assert as_list == expect and all(type(v) is int for v in as_list)
    as_array = np.array(words, dtype=np.uint64)
    store_slots(as_array, slots, np.array(new, dtype=np.uint64))
    assert as_array.tolist() == expect


def test_store_slots_refuses_a_length_mismatch_and_stores_nothing():
    arr = [1, 2, 3]
    with pytest.raises(ValueError):
        store_slots(arr, [0, 1], [9])
    assert arr == [1, 2, 3]


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=64))
def test_distinct_values_is_np_unique(values):
    arr = np.array(values, dtype=np.int64)
    got = distinct_values(arr)
    assert got == sorted(set(values)) and all(type(v) is int for v in got)
