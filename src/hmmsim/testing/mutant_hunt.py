"""Hunt the known-bug mutants with the fuzzer and the interleaving explorer.

For each mutant of `hmmsim.mutants` a `Hunt` names the generic search that
should find it and the budget it gets: an exhaustive exploration of a
built-in scenario with a preemption bound and a schedule cap, or a seeded
fuzz run of so many steps in a feature configuration. `hunt()` runs that
search on a Kernel with the mutant on (or, with `fixed=True`, on the fixed
model with the same budget) and reports whether anything fired and what.

A hunt never looks at which mutant is on: the search and its checkers are
the ones `hmmsim explore` and `hmmsim fuzz` use (invariants after the run,
the byte shadow, deadlock and livelock detection, kernel oopses and
warnings). The budgets are stated here, and the tests assert that each
mutant is found within its budget and that the fixed model runs the same
budget clean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hmmsim.kconfig import KConfig
from hmmsim.mutants import MUTANTS


@dataclass(frozen=True)
class Hunt:
    """How a mutant is searched for, and with what budget."""

    kind: str  # "explore", "fuzz" (dmirror), "walk", "devalloc" or "alias" (API-level fuzzers)
    scenario: str = ""  # explore: built-in scenario
    preemptions: int = 1  # explore: preemption bound
    max_schedules: int = 500  # explore: schedule budget
    features: frozenset = frozenset({"d"})
    steps: int = 0  # fuzz: step budget per seed; walk: fresh address spaces per seed
    seeds: tuple[int, ...] = (0,)  # fuzz: the runs' seeds

    def budget(self) -> str:
        if self.kind == "explore":
            return (
                f"explore {self.scenario} with <= {self.preemptions} preemption(s), "
                f"<= {self.max_schedules} schedules"
            )
        f = "".join(sorted(self.features))
        if self.kind in API_FUZZERS:
            return (
                f"{self.kind}-fuzz {self.steps} fresh worlds per seed, seeds {list(self.seeds)}, "
                f"features {f}"
            )
        return f"fuzz {self.steps} steps per seed, seeds {list(self.seeds)}, features {f}"


HUNTS: dict[str, Hunt] = {
    "hmm_fault_spin": Hunt("explore", "hmm_fault_on_locked_device_page", 1, 200),
    "split_fault_lock_handoff": Hunt("explore", "thp_split_vs_fault_page", 1, 200),
    "insert_huge_pmd_leak": Hunt("explore", "thp_hole_migrate_vs_cpu_store", 1, 400),
    "device_fault_no_ref": Hunt("explore", "eviction_vs_cpu_fault", 1, 300),
    "coherent_device_private_flag": Hunt(
        "fuzz", features=frozenset("abcd"), steps=3000, seeds=(0, 1)
    ),
    "exclusive_drops_mapcount": Hunt("fuzz", steps=2000, seeds=(0, 1)),
    "stale_mapping_on_free": Hunt("fuzz", steps=3000, seeds=(0, 1)),
    "hmm_foreign_device_private": Hunt("fuzz", steps=3000, seeds=(0, 1)),
    "hmm_zero_pfn0": Hunt("walk", features=frozenset("de"), steps=20, seeds=(0,)),
    "stale_order_on_reuse": Hunt("devalloc", steps=10, seeds=(0,)),
    # series (b)'s device migration types meet fork and mprotect only through
    # an eviction (no mmap_lock); (c) makes a lost type name the wrong page
    "fork_plain_migration_entry": Hunt(
        "explore", "fork_vs_eviction", 1, 200, features=frozenset("abcd")
    ),
    "huge_pmd_plain_migration_entry": Hunt(
        "explore", "mprotect_vs_eviction_thp", 1, 200, features=frozenset("abcd")
    ),
    "pvmw_no_device_private_flag": Hunt(
        "alias", features=frozenset("abcd"), steps=40, seeds=(0, 1)
    ),
    "collect_skips_large_folio": Hunt("explore", "thp_split_vs_fault_page", 1, 50),
}


def _walk(runs: int, seed: int, features, bugs):
    from hmmsim.testing.walk_fuzz import run_walk_fuzz

    return run_walk_fuzz(runs, seed, features=features, bugs=bugs)


def _devalloc(runs: int, seed: int, features, bugs):
    from hmmsim.testing.devalloc_fuzz import run_devalloc_fuzz

    return run_devalloc_fuzz(runs, seed, bugs=bugs)


def _alias(runs: int, seed: int, features, bugs):
    from hmmsim.testing.alias_fuzz import run_alias_fuzz

    return run_alias_fuzz(runs, seed, bugs=bugs)


#: driver-shaped API fuzzers: series (e)'s unified walk (lib/test_hmm.c does not
#: use it), device-page reuse at changing orders (dmirror never does that), and
#: series (c) device-private offsets equal to RAM PFNs (dmirror's offsets never are)
API_FUZZERS = {"walk": _walk, "devalloc": _devalloc, "alias": _alias}


@dataclass
class HuntResult:
    """What one hunt found."""

    bug: str
    fixed: bool  # True: the fixed model was run with the mutant's budget
    budget: str
    found: bool
    by: str  # "explore" or "fuzz"
    used: str = ""  # how much of the budget ran (to the detection, if any)
    detail: str = ""  # the checker's message
    seconds: float = 0.0
    runs: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "bug": self.bug,
            "model": "fixed" if self.fixed else "mutant",
            "found": self.found,
            "by": self.by,
            "budget": self.budget,
            "used": self.used,
            "detail": self.detail,
            "seconds": round(self.seconds, 2),
            "origin": MUTANTS[self.bug].origin,
        }


def hunt(bug: str, *, fixed: bool = False, hunt_: Hunt | None = None) -> HuntResult:
    """Run `bug`'s hunt on the mutant (or on the fixed model with `fixed=True`)."""
    if bug not in MUTANTS:
        raise ValueError(f"unknown bug {bug!r}: choose from {sorted(MUTANTS)}")
    h = hunt_ or HUNTS[bug]
    bugs = frozenset() if fixed else frozenset({bug})
    res = HuntResult(bug=bug, fixed=fixed, budget=h.budget(), found=False, by=h.kind)
    t0 = time.perf_counter()
    if h.kind == "explore":
        from hmmsim.testing.explore import explore
        from hmmsim.testing.scenarios import make_runner

        cfg = KConfig(ram_bytes=64 << 20, hugetlb_pages=0, features=h.features, bugs=bugs)
        rep = explore(
            make_runner(h.scenario, cfg),
            preemptions=h.preemptions,
            max_schedules=h.max_schedules,
            stop_on_first=True,
            name=h.scenario,
        )
        res.found = bool(rep.violations)
        state = "complete" if rep.complete or res.found else "budget spent"
        res.used = f"{rep.schedules} schedule(s) ({state})"
        if rep.violations:
            v = rep.violations[0]
            res.detail = f"{v.error} [schedule {v.choices}]"
    elif h.kind == "fuzz":
        from hmmsim.testing.fuzz import run_fuzz

        steps = 0
        for seed in h.seeds:
            rep = run_fuzz(
                h.steps,
                seed,
                configs=[(frozenset(h.features), None)],
                bugs=bugs,
                shrink_seconds=5.0,
            )
            steps += rep.steps
            if rep.violations:
                v = rep.violations[0]
                res.found = True
                res.detail = f"seed {seed}: {v.message}"
                break
        res.used = f"{steps} step(s)"
    elif h.kind in API_FUZZERS:
        runs = 0
        for seed in h.seeds:
            rep = API_FUZZERS[h.kind](h.steps, seed, h.features, bugs)
            runs += rep.runs
            if rep.failure:
                res.found = True
                res.detail = f"seed {seed}: {rep.failure}"
                break
        res.used = f"{runs} world(s)"
    else:  # pragma: no cover - HUNTS is static
        raise ValueError(f"unknown hunt kind {h.kind!r}")
    res.seconds = time.perf_counter() - t0
    return res
