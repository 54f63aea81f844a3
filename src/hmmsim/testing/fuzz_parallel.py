"""`hmmsim fuzz --workers N [--ray]`: one fuzz campaign sharded across processes.

The run's steps are cut into shards of ``SHARD_SEQUENCES`` sequences; shard
``i`` is an ordinary ``hmmsim.testing.fuzz.run_fuzz`` call with its own seed
(``shard_seed(seed, i)``), run in a worker: a
``concurrent.futures.ProcessPoolExecutor`` process, or a Ray task with
``ray`` (https://docs.ray.io). A shard localises, shrinks and scripts what
it finds itself, so shrinking runs in parallel too; the parent gathers the
shards' reports in shard order and merges them into one ``FuzzReport``:
counters are summed, and violations with one signature become one
(the first shard's, shrunk there) whose ``count`` is the sum.

The shards depend only on (seed, steps, sequence_steps), never on the number
of workers or on timing, so ``--workers 1`` and ``--workers 8`` find the
same violations and report the same steps. Without ``--keep-going`` the
merged run stops where a sequential run over the shards would have: at the
first shard, in shard order, whose violations reach ``max_violations``;
shards after it are cancelled (or stopped if already running) and are not
counted. (The sharded run uses other sequence seeds than a plain
``hmmsim fuzz --seed S``: the two find the same kinds of bugs, not
necessarily in the same sequences.)
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

from hmmsim.testing.fuzz import FuzzReport, run_fuzz

#: Sequences per shard: small enough to spread a 10 000-step run (34
#: sequences at the default 300 steps) over 9 shards, big enough that a
#: shard's start-up (importing the model in a fresh process) is noise.
SHARD_SEQUENCES = 4


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    seed: int
    steps: int


def shard_seed(seed: int, index: int) -> int:
    """The seed of shard ``index`` of a run seeded ``seed``."""
    return random.Random(f"hmmsim-fuzz-shard/{seed}/{index}").getrandbits(63)


def plan_shards(
    steps: int, seed: int, sequence_steps: int, shard_sequences: int = SHARD_SEQUENCES
) -> list[Shard]:
    """Cut ``steps`` into shards of ``shard_sequences`` sequences (the last
    one shorter); independent of the number of workers."""
    per = max(1, shard_sequences) * sequence_steps
    out = []
    done = 0
    while done < steps:
        n = min(per, steps - done)
        i = len(out)
        out.append(Shard(i, shard_seed(seed, i), n))
        done += n
    return out


def run_shard(shard: Shard, kwargs: dict) -> FuzzReport:
    """Run one shard (in a worker): ``run_fuzz`` with the shard's seed and steps."""
    return run_fuzz(shard.steps, shard.seed, **kwargs)


def _renumber(rep: FuzzReport, shard: Shard, first: int) -> None:
    """Give a shard's violations their numbers in the merged run, whose
    sequences are the shards' in shard order (``first``: the sequences the
    earlier shards ran; a failing sequence ends early, so a shard may run
    more than ``SHARD_SEQUENCES``), in the report and the replay script."""
    for v in rep.violations:
        local = v.sequence
        v.sequence = first + local
        v.script = v.script.replace(
            f"(sequence {local}, sequence seed {v.seed})",
            f"(sequence {v.sequence} of a sharded run: shard {shard.index}, seed "
            f"{shard.seed}, its sequence {local}, sequence seed {v.seed})",
            1,
        )


def merge_into(total: FuzzReport, rep: FuzzReport) -> None:
    """Add one shard's report to the merged one (shards in order)."""
    total.steps += rep.steps
    total.sequences += rep.sequences
    total.checks += rep.checks
    total.sweeps += rep.sweeps
    total.bytes_checked += rep.bytes_checked
    total.bytes_lost += rep.bytes_lost
    total.expected_warnings += rep.expected_warnings
    total.failing_sequences += rep.failing_sequences
    total.ops.update(rep.ops)
    total.errnos.update(rep.errnos)
    total.configs.update(rep.configs)
    for v in rep.violations:
        seen = next((w for w in total.violations if w.signature == v.signature), None)
        if seen is not None:
            seen.count += v.count
        else:
            total.violations.append(v)


def _terminate_pool(ex) -> None:
    """Stop a ProcessPoolExecutor's busy workers (shards no longer wanted)."""
    procs = getattr(ex, "_processes", None) or {}
    for p in list(procs.values()):
        if p.is_alive():
            p.terminate()


def run_fuzz_parallel(
    steps: int,
    seed: int = 0,
    *,
    workers: int = 2,
    ray: str | None = None,
    sequence_steps: int = 300,
    check_every: int = 10,
    sweep_every: int = 50,
    max_violations: int = 1,
    on_progress: Callable[[int, FuzzReport], None] | None = None,
    shard_sequences: int = SHARD_SEQUENCES,
    **kwargs,
) -> FuzzReport:
    """``run_fuzz`` sharded over ``workers`` processes (or Ray tasks); one
    merged FuzzReport.

    ray: None for the local process pool; "local" for a local Ray cluster
    of ``workers`` CPUs; otherwise a Ray address for ``ray.init``.
    The other keyword arguments are run_fuzz's (configs, shrink_seconds,
    bugs, kernel, ...) and go to every shard. on_progress(steps, report)
    is called with the merged report at the start and after each shard.
    """
    kw = dict(
        kwargs,
        sequence_steps=sequence_steps,
        check_every=check_every,
        sweep_every=sweep_every,
        max_violations=max_violations,
    )
    total = FuzzReport(seed=seed, check_every=check_every, sweep_every=sweep_every)
    total.bugs = frozenset(kwargs.get("bugs", frozenset()))
    if on_progress:
        on_progress(0, total)
    shards = plan_shards(steps, seed, sequence_steps, shard_sequences)
    t0 = time.perf_counter()
    results: dict[int, FuzzReport] = {}
    state = {"merged": 0, "failing": 0, "stop": len(shards)}

    def arrived(i: int, rep: FuzzReport) -> bool:
        """Record shard i; merge every shard now complete in order; True when done."""
        results[i] = rep
        while state["merged"] < state["stop"] and state["merged"] in results:
            j = state["merged"]
            r = results.pop(j)
            _renumber(r, shards[j], total.sequences)
            merge_into(total, r)
            state["merged"] += 1
            if total.failing_sequences >= max_violations:
                state["stop"] = j + 1
            total.seconds = time.perf_counter() - t0
            if on_progress:
                on_progress(total.steps, total)
        return state["merged"] >= state["stop"]

    if ray is not None:
        _run_ray(shards, kw, ray, workers, arrived)
    elif workers <= 1 or len(shards) <= 1:
        for s in shards:
            if arrived(s.index, run_shard(s, kw)):
                break
    else:
        _run_pool(shards, kw, workers, arrived)
    total.seconds = time.perf_counter() - t0
    return total


def _run_pool(shards: list[Shard], kw: dict, workers: int, arrived) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ex = ProcessPoolExecutor(max_workers=min(workers, len(shards)))
    futs: dict = {}
    try:
        futs = {ex.submit(run_shard, s, kw): s.index for s in shards}
        for f in as_completed(futs):
            if arrived(futs[f], f.result()):
                break
    finally:
        # done, an error or Ctrl-C: the shards still queued or running are not wanted
        for f in futs:
            f.cancel()
        _terminate_pool(ex)
        ex.shutdown(wait=True, cancel_futures=True)


def _run_ray(shards: list[Shard], kw: dict, address: str, workers: int, arrived) -> None:
    from hmmsim.sim.sweep import ray_session

    ray, started = ray_session(address, workers if workers > 1 else None)
    try:
        remote = ray.remote(run_shard)
        refs = {remote.remote(s, kw): s.index for s in shards}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                if arrived(refs[done[0]], ray.get(done[0])):
                    break
        finally:
            for r in pending:
                ray.cancel(r, force=True)
    finally:
        if started:
            ray.shutdown()


def parallel_runner(workers: int | None, ray: str | None):
    """For `hmmsim fuzz --workers N [--ray[=ADDRESS]]`: run_fuzz_parallel with
    those set, called like run_fuzz. Without Ray installed, --ray is a
    one-line usage error."""
    import functools
    import os

    import click

    if ray is not None:
        from hmmsim.sim.sweep import SweepError, ray_module

        try:
            ray_module()
        except SweepError as e:
            raise click.UsageError(str(e)) from None
    n = workers if workers is not None else (os.cpu_count() or 1)
    return functools.partial(run_fuzz_parallel, workers=n, ray=ray)


__all__ = [
    "SHARD_SEQUENCES",
    "Shard",
    "merge_into",
    "parallel_runner",
    "plan_shards",
    "run_fuzz_parallel",
    "run_shard",
    "shard_seed",
]
