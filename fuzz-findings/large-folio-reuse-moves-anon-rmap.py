#!/usr/bin/env python3
"""Replay of a finding: write-fault reuse of a PTE-mapped THP moved the whole
folio's anon rmap.

The story, its status and the outcome expected today are in docs/findings.md
(section large-folio-reuse-moves-anon-rmap); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
large-folio-reuse-moves-anon-rmap` runs the same replay and compares the
outcome with the documented one. Run this script with the Python that has
hmmsim installed: it prints the outcome, exits 1 while the failure reproduces
and 0 ("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("large-folio-reuse-moves-anon-rmap")
