"""The run loop behind `hmmsim fuzz`: sequences of generated operations, and the report."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hmmsim.testing.fuzz.ops import DEFAULT_RAM, THP_MODES, FuzzFailure, SeqConfig, feature_configs
from hmmsim.testing.fuzz.rules import Generator
from hmmsim.testing.fuzz.shrink import execute, localise, replay_script, shrink
from hmmsim.testing.fuzz.world import World

DEFAULT_SEQUENCE_STEPS = 300
#: Steps between invariant checks and between full sweeps in `run_fuzz`; the
#: operation's own range is compared with the shadow after every step.
DEFAULT_CHECK_EVERY = 10
DEFAULT_SWEEP_EVERY = 50


@dataclass
class Violation:
    """A failing sequence, shrunk, with its replay script."""

    signature: str
    message: str
    cfg: SeqConfig
    sequence: int
    seed: int
    original_steps: int
    ops: list
    script: str
    bytes_lost: int = 0
    reproduced: bool = True
    count: int = 1

    def to_json(self) -> dict:
        return {
            "signature": self.signature,
            "sequences_failing": self.count,
            "message": self.message,
            "config": self.cfg.label(),
            "sequence": self.sequence,
            "sequence_seed": self.seed,
            "original_steps": self.original_steps,
            "shrunk_steps": len(self.ops),
            "operations": [str(op) for op in self.ops],
            "bytes_lost": self.bytes_lost,
            "reproduced_on_replay": self.reproduced,
        }


@dataclass
class FuzzReport:
    """What `run_fuzz` did and found."""

    seed: int
    steps: int = 0
    sequences: int = 0
    seconds: float = 0.0
    checks: int = 0
    sweeps: int = 0
    check_every: int = 0
    sweep_every: int = 0
    bytes_checked: int = 0
    bytes_lost: int = 0
    expected_warnings: int = 0
    failing_sequences: int = 0
    ops: Counter = field(default_factory=Counter)
    errnos: Counter = field(default_factory=Counter)
    configs: Counter = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    bugs: frozenset = frozenset()

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "sequences": self.sequences,
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps_per_second, 1),
            "invariant_checks": self.checks,
            "check_every": self.check_every,
            "sweeps": self.sweeps,
            "sweep_every": self.sweep_every,
            "bytes_checked": self.bytes_checked,
            "bytes_lost": self.bytes_lost,
            "expected_warnings": self.expected_warnings,
            "operations": dict(sorted(self.ops.items())),
            "errnos": dict(sorted(self.errnos.items())),
            "configs": dict(sorted(self.configs.items())),
            "failing_sequences": self.failing_sequences,
            "violations": [v.to_json() for v in self.violations],
        }


def _seq_seed(seed: int, index: int) -> int:
    return random.Random(f"hmmsim-fuzz/{seed}/{index}").getrandbits(63)


def run_fuzz(
    steps: int,
    seed: int = 0,
    *,
    configs: list[tuple[frozenset, str | None]] | None = None,
    sequence_steps: int = DEFAULT_SEQUENCE_STEPS,
    check_every: int = DEFAULT_CHECK_EVERY,
    sweep_every: int = DEFAULT_SWEEP_EVERY,
    shrink_seconds: float = 300.0,
    max_violations: int = 1,
    on_progress: Callable[[int, FuzzReport], None] | None = None,
    ram_bytes: int = DEFAULT_RAM,
    shared_anon: float = 0.15,
    bugs: frozenset = frozenset(),
    kernel: str = "mainline",
    data_plane: str = "bytes",
) -> FuzzReport:
    """Run `steps` generated operations in sequences of `sequence_steps`.

    configs: the (features, conflict_resolution) pairs to sample from per
    sequence (default: every buildable one). check_every: steps between
    invariant checks (1: after every step); sweep_every: steps between
    comparisons of every mapped page with the shadow (each operation's own
    range is compared after every step regardless). Both also run after the
    last step of each sequence. Each
    failing sequence is localised, shrunk (for at most shrink_seconds) and
    turned into a replay script (a failure with the signature of one already
    found is only counted); the run stops after max_violations failing
    sequences.
    shared_anon: probability that a generated mmap is MAP_SHARED.
    bugs: known-bug mutants to put back in every sequence's Kernel.
    kernel: the KConfig.kernel profile of every sequence ("mainline", "6.12").
    data_plane: every sequence's KConfig.data_plane; with "tokens" the
    stores and device writes keep to a page's first 8 bytes (ops.tokens).
    """
    configs = configs or feature_configs(kernel)
    rep = FuzzReport(seed=seed, check_every=check_every, sweep_every=sweep_every)
    rep.bugs = frozenset(bugs)
    if on_progress:  # the caller holds the live report from the start (Ctrl-C)
        on_progress(0, rep)
    master = random.Random(seed)
    t0 = time.perf_counter()
    index = 0
    while rep.steps < steps and rep.failing_sequences < max_violations:
        fs, cr = configs[master.randrange(len(configs))]
        cfg = SeqConfig(
            frozenset(fs),
            cr,
            master.choice(THP_MODES),
            ram_bytes,
            frozenset(bugs),
            kernel,
            data_plane,
        )
        sseed = _seq_seed(seed, index)
        n = min(sequence_steps, steps - rep.steps)
        w = World(cfg)
        gen = Generator(w, random.Random(sseed), shared_anon=shared_anon)
        ops: list = []
        failure = None
        last_check = last_sweep = -1
        for i in range(n):
            op = gen.next()
            ops.append(op)
            try:
                w.apply(op)
                sweep = (i + 1) % sweep_every == 0 or i == n - 1
                if sweep or (i + 1) % check_every == 0:
                    w.check(sweep=sweep)
                    last_check = i
                    last_sweep = i if sweep else last_sweep
            except FuzzFailure as f:
                f.step = i
                failure = f
                break
            if on_progress and (i + 1) % 50 == 0:
                on_progress(rep.steps + i + 1, rep)
        rep.steps += len(ops)
        rep.sequences += 1
        rep.checks += w.stats["invariant_checks"]
        rep.sweeps += w.stats["sweeps"]
        rep.bytes_checked += w.bytes_checked
        rep.expected_warnings += w.expected_warnings
        rep.configs[cfg.label()] += 1
        rep.ops.update(
            {k: v for k, v in w.stats.items() if k not in ("invariant_checks", "sweeps")}
        )
        rep.errnos.update(w.errnos)
        if failure is not None:
            rep.bytes_lost += failure.bytes_lost
            rep.failing_sequences += 1
            seen = next((v for v in rep.violations if v.signature == failure.signature), None)
            if seen is not None:  # the same failure again: counted, not shrunk again
                seen.count += 1
            else:
                good = last_check if failure.kind == "invariant" else last_sweep
                try:
                    v = _make_violation(cfg, ops, failure, good, index, sseed, shrink_seconds)
                except KeyboardInterrupt:
                    # Ctrl-C while localising or shrinking: keep the failing
                    # sequence as it ran, so the report still has it
                    rep.violations.append(_unshrunk_violation(cfg, ops, failure, index, sseed))
                    raise
                rep.violations.append(v)
        index += 1
        if on_progress:
            on_progress(rep.steps, rep)
    rep.seconds = time.perf_counter() - t0
    return rep


def _unshrunk_violation(cfg, ops, failure, index, sseed) -> Violation:
    """A failing sequence as it ran, neither shrunk nor replayed (the run was
    interrupted before `_make_violation` finished)."""
    meta = (
        f"Found by `hmmsim fuzz` (sequence {index}, sequence seed {sseed}) with "
        f"{cfg.label()}; interrupted before shrinking: all {len(ops)} operations.\n"
        f"Failure: {failure}".replace('"""', "'''")
    )
    return Violation(
        signature=failure.signature,
        message=str(failure),
        cfg=cfg,
        sequence=index,
        seed=sseed,
        original_steps=len(ops),
        ops=list(ops),
        script=replay_script(cfg, list(ops), meta=meta),
        bytes_lost=failure.bytes_lost,
        reproduced=False,
    )


def _make_violation(cfg, ops, failure, last_good, index, sseed, shrink_seconds) -> Violation:
    """Localise, shrink and script one failing sequence."""
    cut = localise(cfg, ops, failure, last_good)
    r = execute(cfg, cut, check_every=0)
    reproduced = r.failure is not None
    shrunk = cut
    if reproduced:
        shrunk = shrink(cfg, cut, r.failure.signature, deadline=time.monotonic() + shrink_seconds)
    meta = (
        f"Found by `hmmsim fuzz` (sequence {index}, sequence seed {sseed}) with "
        f"{cfg.label()}; shrunk from {len(ops)} to {len(shrunk)} operations.\n"
        f"Failure: {failure}".replace('"""', "'''")
    )
    if not reproduced:
        meta += "\nWARNING: replaying the sequence did not reproduce the failure."
    final = execute(cfg, shrunk, check_every=0).failure if reproduced else None
    return Violation(
        signature=failure.signature,
        message=str(final or failure),
        cfg=cfg,
        sequence=index,
        seed=sseed,
        original_steps=len(ops),
        ops=shrunk,
        script=replay_script(cfg, shrunk, meta=meta),
        bytes_lost=failure.bytes_lost,
        reproduced=reproduced,
    )
