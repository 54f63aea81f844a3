"""`hmmsim oracle`: build the Linux 6.12 oracle, record goldens, diff them with the model.

Opt-in: nothing in the test suite boots QEMU. See docs/oracle.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from hmmsim.oracle import golden, machine

workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the kernel source, bzImage and runner live "
    "(default $HMMSIM_ORACLE_DIR or ~/.cache/hmmsim-oracle).",
)
timeout_option = click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds one scenario may run in the guest before it counts as hung.",
)


def _paths(workdir: Path | None) -> machine.Paths:
    return machine.Paths(workdir or machine.default_workdir())


def _files(scns: tuple[str, ...]) -> list[Path]:
    try:
        files = machine.scenario_files(list(scns))
    except machine.OracleError as e:
        raise click.UsageError(str(e)) from None
    if not files:
        raise click.UsageError("no scenarios given")
    return files


def _record(paths, files, out_dir, timeout, log) -> tuple[machine.Recording, list]:
    try:
        rec = machine.record_texts(paths, [f.read_bytes() for f in files], log, 120.0, timeout)
    except machine.OracleError as e:
        raise click.ClickException(str(e)) from None
    problems = machine.write_goldens(files, rec, out_dir, log)
    return rec, problems


@click.group()
def oracle() -> None:
    """Run scenarios on a real Linux 6.12 kernel under QEMU (goldens for the model)."""


@oracle.command()
@workdir_option
@click.option("-j", "--jobs", type=int, default=os.cpu_count() or 1, show_default=True)
@click.option("--no-apt", is_flag=True, help="Do not install missing Debian packages.")
def build(workdir: Path | None, jobs: int, no_apt: bool) -> None:
    """Install the packages, unpack linux-source-6.12, configure, make bzImage, compile the runner.

    Incremental: an existing source tree, .config (same kernel.config) and
    object files are reused.
    """
    paths = _paths(workdir)
    t0 = time.monotonic()
    try:
        timings = machine.build(paths.workdir, jobs, click.echo, apt=not no_apt)
    except machine.OracleError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"kernel {paths.bzimage}\nrunner {paths.runner}\n"
        f"took {time.monotonic() - t0:.0f}s (make {timings['make_s']}s)"
    )


@oracle.command()
@click.argument("scns", nargs=-1, required=True)
@workdir_option
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write NAME.golden/NAME.log here (default: next to each scenario).",
)
@timeout_option
def record(scns: tuple[str, ...], workdir: Path | None, out_dir: Path | None, timeout: float):
    """Boot the oracle, run the scenarios (files or directories of *.scn), write goldens."""
    files = _files(scns)
    rec, problems = _record(_paths(workdir), files, out_dir, timeout, click.echo)
    written = sum(machine.golden_paths(f, out_dir)[0].exists() for f in files)
    click.echo(
        f"recorded {written}/{len(files)} scenarios in {rec.seconds:.1f}s "
        f"({rec.boots} boot{'s' if rec.boots != 1 else ''}); guest: {'; '.join(rec.info)}"
    )
    for f, why in problems:
        click.echo(f"  {f}: {why}")


def _model_output(text: str, kernel: str | None) -> str:
    from hmmsim.scenario import ScenarioError, run_text, scenario_config

    try:
        cfg, _ = scenario_config(kernel=kernel)
        return run_text(text, cfg).text()
    except ScenarioError as e:
        return f"! ERROR ScenarioError: {e}\n"
    except Exception as e:  # noqa: BLE001 - report, never a traceback
        return f"! ERROR {type(e).__name__}: {e}\n"


@oracle.command()
@click.argument("scns", nargs=-1, required=True)
@workdir_option
@click.option("--kernel", default="6.12", show_default=True, help="Model behaviour profile.")
@click.option("--record/--no-record", "do_record", default=True, help="Record missing goldens.")
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scenario.")
@click.option("-v", "--verbose", is_flag=True, help="Print every scenario, not only divergences.")
def diff(
    scns: tuple[str, ...],
    workdir: Path | None,
    kernel: str,
    do_record: bool,
    timeout: float,
    as_json: bool,
    verbose: bool,
) -> None:
    """Compare the goldens (recorded if missing) with the model; exit 1 on a divergence."""
    files = _files(scns)
    missing = [f for f in files if not machine.golden_paths(f, None)[0].exists()]
    if missing:
        if not do_record:
            raise click.UsageError(f"{len(missing)} scenarios have no golden (--record)")
        _record(_paths(workdir), missing, None, timeout, lambda s: click.echo(s, err=True))
    n_ok = n_ops = n_ev = 0
    results = []
    for f in files:
        g = machine.golden_paths(f, None)[0]
        if not g.exists():
            click.echo(f"{f}: no golden", err=True)
            continue
        c = golden.compare(f.stem, g.read_text(), _model_output(f.read_text(), kernel))
        results.append(c)
        n_ok += c.agree
        n_ops += c.ops_agree
        n_ev += c.events_agree
        if as_json:
            click.echo(json.dumps({"file": str(f), **c.__dict__}))
        elif not c.agree or verbose:
            click.echo(f"{f}: {'agree' if c.agree else 'DIFFER'}")
            if not c.ops_agree:
                click.echo(
                    f"  op line {c.first_line}:\n    kernel {c.kernel}\n    model  {c.model}"
                )
            if not c.events_agree:
                click.echo(f"  events: kernel {c.kernel_events} model {c.model_events}")
    total = len(results)
    click.echo(
        f"{n_ok}/{total} agree (op lines {n_ops}/{total}, events {n_ev}/{total}); "
        f"model profile {kernel}",
        err=as_json,
    )
    if n_ok != total:
        raise SystemExit(1)
