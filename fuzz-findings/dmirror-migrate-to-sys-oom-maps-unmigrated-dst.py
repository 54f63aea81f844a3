#!/usr/bin/env python3
"""Replay of a finding: MIGRATE_TO_SYS out of memory: finalize maps dst pages
never migrated.

The story, its status and the outcome expected today are in docs/findings.md
(section dmirror-migrate-to-sys-oom-maps-unmigrated-dst); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
dmirror-migrate-to-sys-oom-maps-unmigrated-dst` runs the same replay and
compares the outcome with the documented one. Run this script with the Python
that has hmmsim installed: it prints the outcome, exits 1 while the failure
reproduces and 0 ("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("dmirror-migrate-to-sys-oom-maps-unmigrated-dst")
