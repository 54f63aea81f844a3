"""`hmmsim fuzz`: the seeded stateful fuzzer of hmmsim.testing.fuzz on the command line.

Runs `--steps` generated operations (processes, mmap/munmap/mprotect/mremap/
madvise, CPU loads and stores, dmirror ioctls on both device kinds, THP
switches) in sequences on fresh Kernels, checks every load and device
buffer against a shadow of the bytes each process must see, the invariant
checker every `--check-every` steps, and prints what it ran and found. A
failing sequence is shrunk and written as a standalone replay script
(`--out`). Exit status: 0 when nothing was found, 1 on any violation, 2 on
a usage error (one line, no traceback).

The `fuzz` object is a click command; `hmmsim.cli` registers it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from hmmsim.cli_options import (
    RESOLUTIONS,
    Interrupted,
    conflict_option,
    data_plane_option,
    feature_option,
    guarded_main,
    resolution_for,
    series_set,
)
from hmmsim.kconfig import KERNELS, ConfigError, KConfig
from hmmsim.mutants import MUTANTS

__all__ = ["RESOLUTIONS", "fuzz"]


class _OneLineCommand(click.Command):
    """Errors print one line, also when the command runs on its own
    (hmmsim.cli_options.guarded_main: 2 usage, 3 host memory, 130 Ctrl-C)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        parent = super()
        return guarded_main(
            "hmmsim fuzz",
            lambda: parent.main(args, prog_name, complete_var, standalone_mode=False, **extra),
        )


def _configs(features: tuple[str, ...], resolution: str | None, kernel: str = "mainline"):
    """The (features, conflict_resolution) pairs to run: one, or every buildable one."""
    from hmmsim.testing.fuzz import feature_configs

    fs = series_set(features, kernel)  # refuses a series the profile lacks
    if not features and not getattr(features, "off", ()):
        out = feature_configs(kernel)
        if resolution:
            out = [(fs, cr) for fs, cr in out if cr in (None, resolution)]
        return out, "sampled per sequence from every buildable combination"
    cr = resolution_for(fs, resolution)
    try:
        KConfig(features=fs, conflict_resolution=cr, kernel=kernel)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    label = ("".join(sorted(fs)) or "none") + (f" ({cr})" if cr else "")
    return [(fs, cr)], label


def _script_paths(out: str | None, seed: int, n: int) -> list[Path]:
    base = Path(out) if out else Path(f"hmmsim-fuzz-seed{seed}.py")
    if n <= 1:
        return [base]
    return [base] + [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(2, n + 1)]


@click.command("fuzz", cls=_OneLineCommand)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=10000,
    show_default=True,
    help="Operations to run in all.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole run.")
@feature_option(
    "Enable seed series (repeatable, or comma-separated: --feature a,b,c; d is on, as at "
    "the pin, unless no-d). Without --feature every buildable combination is sampled "
    "per sequence."
)
@conflict_option
@click.option(
    "--sequence-steps",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Operations per sequence (each sequence boots a fresh Kernel).",
)
@click.option(
    "--check-every",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Steps between invariant checks (1: after every step).",
)
@click.option(
    "--sweep-every",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Steps between comparisons of all memory with the shadow.",
)
@click.option(
    "--shrink-seconds",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Time limit for shrinking one failing sequence.",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="Go on after a violation (each new kind is shrunk and scripted).",
)
@click.option(
    "--bug",
    "bugs",
    multiple=True,
    type=click.Choice(sorted(MUTANTS)),
    help="Put a known kernel bug back (repeatable; see `hmmsim explore --bugs list`).",
)
@click.option(
    "--kernel",
    type=click.Choice(sorted(KERNELS)),
    default="mainline",
    show_default=True,
    help="Kernel profile: the pin, or Linux 6.12's behaviours (no series d).",
)
@data_plane_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no progress bar.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Shard the run's seeds over N processes (hmmsim.testing.fuzz_parallel).",
)
@click.option(
    "--ray",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[=ADDRESS]",
    help="Shards as Ray tasks: a local cluster, or --ray=ADDRESS (pip install '.[ray]').",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Replay script path (default: hmmsim-fuzz-seed<SEED>.py); further ones get -2, -3...",
)
def fuzz(
    steps: int,
    seed: int,
    features: tuple[str, ...],
    conflict_resolution: str | None,
    sequence_steps: int,
    check_every: int,
    sweep_every: int,
    shrink_seconds: float,
    keep_going: bool,
    bugs: tuple[str, ...],
    kernel: str,
    data_plane: str,
    as_json: bool,
    workers: int | None,
    ray: str | None,
    out: str | None,
) -> None:
    """Fuzz the model against a shadow of every process's bytes; shrink what fails."""
    from hmmsim.testing.fuzz import FuzzReport, run_fuzz

    configs, feature_label = _configs(features, conflict_resolution, kernel)
    if workers is not None or ray is not None:
        from hmmsim.testing.fuzz_parallel import parallel_runner

        run_fuzz = parallel_runner(workers, ray)  # seeds sharded, one merged report
    if kernel != "mainline":
        feature_label += f"; kernel profile {kernel}"
    if data_plane != "bytes":
        feature_label += f"; data plane {data_plane}"
    progress = None
    task = None
    if not as_json:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("fuzz seed {task.fields[seed]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("violations {task.fields[violations]}"),
            console=Console(stderr=True),
            transient=True,
        )
        task = progress.add_task("fuzz", total=steps, seed=seed, violations=0)

    latest = []  # the live report, for a Ctrl-C

    def on_progress(done: int, rep) -> None:
        if not latest:
            latest.append(rep)
        if progress is not None:
            progress.update(task, completed=done, violations=rep.failing_sequences)

    t0 = time.perf_counter()
    interrupted = False
    try:
        if progress is not None:
            progress.start()
        rep = run_fuzz(
            steps,
            seed,
            configs=configs,
            sequence_steps=sequence_steps,
            check_every=check_every,
            sweep_every=sweep_every,
            shrink_seconds=shrink_seconds,
            max_violations=(1 << 62) if keep_going else 1,
            on_progress=on_progress,
            bugs=frozenset(bugs),
            kernel=kernel,
            data_plane=data_plane,
        )
    except KeyboardInterrupt:
        # What the run found so far: the violations already shrunk and
        # scripted, and one being shrunk when Ctrl-C came, as it ran.
        interrupted = True
        rep = latest[0] if latest else FuzzReport(seed=seed)
        rep.seconds = time.perf_counter() - t0
    finally:
        if progress is not None:
            progress.stop()

    paths = _script_paths(out, seed, len(rep.violations))
    for v, path in zip(rep.violations, paths, strict=False):
        try:
            path.write_text(v.script)
        except OSError as e:
            raise click.FileError(str(path), hint=e.strerror or str(e)) from None

    if as_json:
        data = rep.to_json()
        data["features"] = feature_label
        data["conflict_resolution"] = conflict_resolution
        data["bugs"] = sorted(bugs)
        data["kernel"] = kernel
        data["data_plane"] = data_plane
        data["replay_scripts"] = [str(p) for p in paths[: len(rep.violations)]]
        data["interrupted"] = interrupted
        click.echo(json.dumps(data, indent=2))
    else:
        _print_report(rep, feature_label, paths)
        if interrupted:
            click.echo(
                f"interrupted  after {rep.steps} of {steps} steps; "
                f"{len(rep.violations)} replay script(s) written"
            )
    if interrupted:
        raise Interrupted()
    if rep.violations:
        sys.exit(1)


def _print_report(rep, feature_label: str, paths: list[Path]) -> None:
    echo = click.echo
    echo(
        f"hmmsim fuzz: seed {rep.seed}: {rep.steps} steps in {rep.sequences} sequences, "
        f"{rep.seconds:.1f} s ({rep.steps_per_second:.0f} steps/s)"
    )
    echo(f"features     {feature_label}")
    if rep.bugs:
        echo(f"bugs         {', '.join(sorted(rep.bugs))} (known-bug mutants put back)")
    echo(
        f"checks       {rep.checks} invariant checks (every {rep.check_every} steps), "
        f"{rep.sweeps} full sweeps (every {rep.sweep_every}), "
        f"{rep.bytes_checked / 2**30:.1f} GiB compared with the shadow"
    )
    top = ", ".join(f"{k} {v}" for k, v in rep.ops.most_common(12))
    echo(f"operations   {top}")
    if rep.expected_warnings:
        echo(f"warnings     {rep.expected_warnings} expected (see ALLOWED_WARNINGS)")
    echo(f"bytes lost   {rep.bytes_lost}")
    echo(f"violations   {rep.failing_sequences}")
    for v, path in zip(rep.violations, paths, strict=False):
        again = f" (and {v.count - 1} more sequences)" if v.count > 1 else ""
        echo(f"  {v.signature}{again}")
        echo(f"    {v.message}")
        echo(
            f"    {v.cfg.label()}; shrunk from {v.original_steps} to {len(v.ops)} steps; "
            f"replay: python {path}"
        )
