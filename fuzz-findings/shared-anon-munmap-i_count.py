#!/usr/bin/env python3
"""Replay of a finding: MAP_SHARED|MAP_ANONYMOUS mappings held no file reference.

The story, its status and the outcome expected today are in docs/findings.md
(section shared-anon-munmap-i_count); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
shared-anon-munmap-i_count` runs the same replay and compares the outcome with
the documented one. Run this script with the Python that has hmmsim installed:
it prints the outcome, exits 1 while the failure reproduces and 0 ("no failure
reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("shared-anon-munmap-i_count")
