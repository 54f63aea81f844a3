#!/usr/bin/env python3
"""Replay of a finding: a device-private CPU fault looked the page up before
re-checking the PTE.

The story, its status and the outcome expected today are in docs/findings.md
(section explore-eviction-vs-cpu-fault); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
explore-eviction-vs-cpu-fault` runs the same replay and compares the outcome
with the documented one. Run this script with the Python that has hmmsim
installed: it prints the outcome, exits 1 while the failure reproduces and 0
("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("explore-eviction-vs-cpu-fault")
