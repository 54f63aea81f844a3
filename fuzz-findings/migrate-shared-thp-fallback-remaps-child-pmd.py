#!/usr/bin/env python3
"""Replay of a finding: device-THP split fallback leaves a fork child's PMD
migration entry behind.

The story, its status and the outcome expected today are in docs/findings.md
(section migrate-shared-thp-fallback-remaps-child-pmd); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
migrate-shared-thp-fallback-remaps-child-pmd` runs the same replay and compares
the outcome with the documented one. Run this script with the Python that has
hmmsim installed: it prints the outcome, exits 1 while the failure reproduces
and 0 ("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("migrate-shared-thp-fallback-remaps-child-pmd")
