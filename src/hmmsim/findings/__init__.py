"""Findings as a product: the bugs hmmsim found, each with a replay and a verdict.

`FINDINGS` (hmmsim.findings.catalog) lists every bug the fuzzer, the
interleaving explorer or the fault injector found, upstream or in the model,
with its status and the outcome its replay has today. `replay(name)` runs
one on a fresh model and returns an `Outcome`; `Outcome.matches(finding)`
says whether that is the documented one. The CLI is `hmmsim findings`
(list, replay NAME, selftest); the prose is docs/findings.md; the scripts
under fuzz-findings/ are thin wrappers that call `script_main(name)`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from hmmsim.findings.catalog import FINDINGS, KINDS, STATUSES, Finding

__all__ = [
    "FINDINGS",
    "KINDS",
    "OUTCOMES",
    "STATUSES",
    "Finding",
    "Outcome",
    "get",
    "replay",
    "script_main",
]

#: The outcome kinds a replay can have, most specific first.
OUTCOMES = {
    "clean": "the replay ran to the end and every invariant held",
    "invariant": "the invariant checker reported violations (InvariantViolation)",
    "livelock": "a kernel loop went round without progress (Livelock)",
    "deadlock": "threads blocked on each other (Deadlock)",
    "kernel-bug": "a BUG_ON / VM_BUG_ON of the kernel fired (KernelBug)",
    "oops": "the kernel would have crashed here (KernelOops)",
    "assertion": "a step did not return what the recorded run returned",
    "crash": "the model raised a host exception (a model bug in itself)",
}


@dataclass(frozen=True)
class Outcome:
    """What one replay did: `kind` (a key of OUTCOMES) and the text that says so."""

    kind: str
    detail: str = ""

    def matches(self, finding: Finding, features: frozenset[str] | None = None) -> bool:
        """Is this the outcome docs/findings.md documents for `finding`?

        `features`: the KConfig features the outcome was seen with (a fix
        switch among them expects "clean"); by default the replay's own.
        """
        if features is None:
            features = finding.requires
        want = finding.expected(features)
        if self.kind != want:
            return False
        return want == "clean" or re.search(finding.match, self.detail) is not None

    def __str__(self) -> str:
        return self.kind if not self.detail else f"{self.kind}: {self.detail}"


def get(name: str) -> Finding:
    """The finding called `name`; KeyError names the known ones."""
    try:
        return FINDINGS[name]
    except KeyError:
        raise KeyError(f"no finding {name!r}; known: {', '.join(FINDINGS)}") from None


def _classify(exc: BaseException) -> Outcome:
    from hmmsim.bug import KernelBug, KernelOops
    from hmmsim.findings.replays import ScheduleFailed
    from hmmsim.locking import Livelock
    from hmmsim.testing.explore import Deadlock
    from hmmsim.testing.invariants import InvariantViolation

    text = str(exc).strip()
    if isinstance(exc, ScheduleFailed):
        kinds = {
            "InvariantViolation": "invariant",
            "Livelock": "livelock",
            "Deadlock": "deadlock",
            "KernelBug": "kernel-bug",
            "KernelOops": "oops",
            "AssertionError": "assertion",
        }
        return Outcome(kinds.get(exc.kind, "crash"), text)
    if isinstance(exc, InvariantViolation):
        return Outcome("invariant", _first(exc.problems))
    if isinstance(exc, Livelock):
        return Outcome("livelock", text)
    if isinstance(exc, Deadlock):
        return Outcome("deadlock", text)
    if isinstance(exc, KernelBug):
        return Outcome("kernel-bug", text)
    if isinstance(exc, KernelOops):
        return Outcome("oops", text)
    if isinstance(exc, AssertionError):
        return Outcome("assertion", text)
    return Outcome("crash", f"{type(exc).__name__}: {text}")


def replay(name: str) -> Outcome:
    """Run finding `name` on a fresh model; what happened, as an Outcome.

    A replay that finishes gets one more invariant check (a violation the
    last step left behind, e.g. rss counters, counts as "invariant").
    """
    from hmmsim.findings.replays import Replay
    from hmmsim.testing.invariants import check_invariants

    finding = get(name)
    r = Replay()
    try:
        finding.replay(r)
    except Exception as e:  # noqa: BLE001 - every failure is an outcome to report
        return _classify(e)
    if r.k is not None:
        problems = check_invariants(r.k, raise_on_error=False)
        if problems:
            return Outcome("invariant", _first(problems))
    return Outcome("clean")


def _first(problems: list[str]) -> str:
    """The first invariant problem, and how many more there are (as the fuzzer says it)."""
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def script_main(name: str) -> None:
    """The body of a fuzz-findings/NAME.py wrapper (the replay-script contract).

    Prints the outcome; exits 1 while the failure reproduces and 0 with
    "no failure reproduced" once the replay runs clean, as `hmmsim fuzz
    --out` scripts do. (`hmmsim findings replay NAME` instead exits 0 when
    the outcome is the documented one.)
    """
    finding = get(name)
    out = replay(name)
    print(f"{name}: {out}")
    print(f"documented: {finding.expect} ({finding.kind}, {finding.status})")
    if out.kind == "clean":
        print("replay finished: no failure reproduced")
        sys.exit(0)
    sys.exit(1)
