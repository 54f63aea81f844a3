#!/usr/bin/env python3
"""Replay of a finding: the invariant checker read PROT_NONE huge PMDs with e & 1,
not pmd_present().

The story, its status and the outcome expected today are in docs/findings.md
(section invariants-protnone-huge-pmd); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
invariants-protnone-huge-pmd` runs the same replay and compares the outcome
with the documented one. Run this script with the Python that has hmmsim
installed: it prints the outcome, exits 1 while the failure reproduces and 0
("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("invariants-protnone-huge-pmd")
