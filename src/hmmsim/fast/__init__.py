"""The fast layer: bulk NumPy forms of per-entry reference loops in mm/.

Each module mirrors the module it speeds up (fast/migrate_device.py beside
mm/migrate_device.py). The reference loop in mm/ owns the iteration: at the
top of a window it offers the run here with one call, and the fast function
either handles the whole run (or a leading part of it) and returns how many
entries it handled, or declines with 0 and the reference loop goes on
entry by entry. A fast function never handles an entry the reference code
would handle differently; tests/unit/test_fastpath_differential.py compares
the whole machine state with the fast layer on and off.

Imports (tests/unit/test_layering.py enforces them): the standard library,
NumPy, include/ (the array forms of the encoders: no bit positions are
written here), the dmirror uAPI constants, kconfig, bug, fast/ itself and
the batched struct-page operations of mm/page_batch.py; no other module of
mm/, drivers/, kernel.py or userspace.py. A per-entry operation of mm/ that a fast
function needs (a page lookup, the reference builder it spot-checks a new
word against, a batched struct-page free) is passed in by the caller in
mm/, as a `Reference` bundle (see fast/migrate_device.py). docs/design.md,
"The reference code and the fast layer", states the contract.

Not kernel code: nothing here has a kernel counterpart.
"""
