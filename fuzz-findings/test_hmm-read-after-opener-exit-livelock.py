#!/usr/bin/env python3
"""Replay of a finding: READ through an fd whose mm is gone spins forever in
dmirror_read().

The story, its status and the outcome expected today are in docs/findings.md
(section test_hmm-read-after-opener-exit-livelock); the steps live in
src/hmmsim/findings/replays.py, and `hmmsim findings replay
test_hmm-read-after-opener-exit-livelock` runs the same replay and compares the
outcome with the documented one. Run this script with the Python that has
hmmsim installed: it prints the outcome, exits 1 while the failure reproduces
and 0 ("no failure reproduced") once it runs clean.
"""

from hmmsim.findings import script_main

script_main("test_hmm-read-after-opener-exit-livelock")
