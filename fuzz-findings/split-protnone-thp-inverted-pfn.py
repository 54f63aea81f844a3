#!/usr/bin/env python3
"""Replay of a finding: splitting a PROT_NONE huge PMD added to the inverted PFN.

The story, its status and the outcome expected today are in docs/findings.md
(section split-protnone-thp-inverted-pfn); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
split-protnone-thp-inverted-pfn` runs the same replay and compares the outcome
with the documented one. Run this script with the Python that has hmmsim
installed: it prints the outcome, exits 1 while the failure reproduces and 0
("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("split-protnone-thp-inverted-pfn")
