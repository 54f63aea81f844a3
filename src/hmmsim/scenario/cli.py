"""`hmmsim run FILE` and `hmmsim scenario gen`: scenarios on the model (docs/scenarios.md)."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import click

from hmmsim.cli_options import conflict_option, feature_option, resolution_for, series_set
from hmmsim.kconfig import ConfigError

KERNELS = ("mainline", "6.12")


def _normalized(text: str) -> list[str]:
    """Operation lines in order, then the `! ` event lines sorted (events are a multiset)."""
    ops, events = [], []
    for ln in text.splitlines():
        if ln.strip():
            (events if ln.startswith("! ") else ops).append(ln)
    return ops + sorted(events)


@click.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@feature_option()
@conflict_option
@click.option(
    "--kernel",
    type=click.Choice(KERNELS),
    default=None,
    help="Behaviour profile of the modelled kernel (default: the KConfig default, mainline).",
)
@click.option("--check-invariants", is_flag=True, help="Check model invariants after each op.")
@click.option(
    "--golden",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Compare with this golden: print a unified diff and exit 1 if they differ.",
)
def run_command(
    file: Path,
    features: tuple[str, ...],
    conflict_resolution: str | None,
    kernel: str | None,
    check_invariants: bool,
    golden: Path | None,
) -> None:
    """Run the scenario FILE on the model and print its output lines."""
    import dataclasses

    from hmmsim.scenario import ScenarioError, run_text, scenario_config

    try:
        cfg, used = scenario_config((), kernel)
        fs = series_set(features, used)
        cfg = dataclasses.replace(
            cfg, features=fs, conflict_resolution=resolution_for(fs, conflict_resolution)
        )
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    if kernel is not None and used != kernel:
        click.echo(f"hmmsim: note: this model has no '{kernel}' profile; ran {used}", err=True)
    try:
        out = run_text(file.read_text(), cfg, check_invariants=check_invariants).text()
    except ScenarioError as e:
        raise click.UsageError(f"{file}: {e}") from None
    if golden is None:
        click.echo(out, nl=False)
        return
    want, got = _normalized(golden.read_text()), _normalized(out)
    if want == got:
        click.echo(out, nl=False)
        return
    diff = difflib.unified_diff(
        want, got, fromfile=str(golden), tofile=f"model ({used})", lineterm=""
    )
    for ln in diff:
        click.echo(ln)
    sys.exit(1)


@click.group("scenario")
def scenario_group() -> None:
    """Scenario tools: the seeded generator."""


@scenario_group.command("gen")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first scenario.")
@click.option("--count", type=click.IntRange(1, 100000), default=1, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write NNNN.scn files here (NNNN counts from 0; scenario i has seed SEED+i). "
    "Without it the scenarios are printed.",
)
def gen_command(seed: int, count: int, out: Path | None) -> None:
    """Generate COUNT random scenarios from SEED (deterministic)."""
    from hmmsim.scenario.gen import generate

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        text = generate(seed + i)
        if out is None:
            click.echo(text)
        else:
            (out / f"{i:04d}.scn").write_text(text)
    if out is not None:
        click.echo(f"wrote {count} scenarios to {out} (seeds {seed}..{seed + count - 1})")
