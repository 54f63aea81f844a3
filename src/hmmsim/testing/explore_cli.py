"""`hmmsim explore SCENARIO`: run a concurrency scenario under many schedules.

Progress (schedules run, violations, time) goes to stderr: a live line when
stderr is a terminal, a plain line every few seconds with --progress, nothing
otherwise. Ctrl-C prints what the search found so far, the interrupted
scenario marked incomplete, saves all reports as JSON (--out, by default
hmmsim-explore-interrupted.json) and exits 130.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from hmmsim.cli_options import (
    Interrupted,
    build_config,
    conflict_option,
    feature_option,
    stderr_is_tty,
)
from hmmsim.mutants import MUTANTS
from hmmsim.testing.explore import ExploreReport, RandomPolicy, explore
from hmmsim.testing.scenarios import SCENARIOS, make_runner

#: Where an interrupted run saves its reports when --out is not given.
INTERRUPTED_OUT = "hmmsim-explore-interrupted.json"


class _Tracker:
    """Counts the schedules one scenario's search runs (through the make_run
    it is given), keeps the violations, and shows progress; after a Ctrl-C
    its `report()` is what the search had found."""

    def __init__(self, name: str, preemptions: int, show) -> None:
        self.name = name
        self.preemptions = preemptions
        self.schedules = 0
        self.violations: list = []
        self.show = show

    def wrap(self, run):
        def counted(policy):
            res = run(policy)
            self.schedules += 1
            if res.error:
                self.violations.append(res)
            self.show(self)
            return res

        return counted

    def report(self) -> ExploreReport:
        return ExploreReport(
            scenario=self.name,
            schedules=self.schedules,
            violations=list(self.violations),
            complete=False,
            preemptions=self.preemptions,
        )


class _Progress:
    """Progress on stderr: rich's live line on a terminal, else (--progress)
    a plain line at the first schedule and then every `every` seconds."""

    def __init__(self, mode: str, max_schedules: int, every: float = 5.0) -> None:
        self.mode = mode  # "live", "lines" or "off"
        self.max = max_schedules
        self.every = every
        self.t0 = self.last = 0.0
        self.live = None
        self.task = None

    def start(self, name: str) -> None:
        self.t0 = time.perf_counter()
        self.last = -1e9
        if self.mode == "live":
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.live = Progress(
                SpinnerColumn(),
                TextColumn("explore {task.fields[name]}"),
                TextColumn("{task.completed} schedules"),
                TextColumn("{task.fields[violations]} violation(s)"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.live.add_task(
                "explore", total=None, name=name, max=self.max, violations=0
            )
            self.live.start()

    def __call__(self, t: _Tracker) -> None:
        if self.mode == "live" and self.live is not None:
            self.live.update(self.task, completed=t.schedules, violations=len(t.violations))
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last >= self.every:
                self.last = now
                click.echo(
                    f"explore {t.name}: {t.schedules} schedules, "
                    f"{len(t.violations)} violation(s), {now - self.t0:.0f} s",
                    err=True,
                )

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


@click.command("explore")
@click.argument("scenario", required=False)
@click.option(
    "--preemptions",
    "-p",
    default=2,
    show_default=True,
    type=click.IntRange(0, 5),
    help="Preemption bound of the exhaustive search.",
)
@click.option(
    "--random",
    "random_runs",
    type=click.IntRange(1),
    default=None,
    help="Run N seeded random schedules instead of the exhaustive search.",
)
@click.option("--seed", default=1, show_default=True, help="Seed of --random.")
@click.option("--max-schedules", default=20000, show_default=True, type=click.IntRange(1))
@feature_option()
@conflict_option
@click.option(
    "--bug",
    "bugs",
    multiple=True,
    type=click.Choice(sorted(MUTANTS)),
    help="Put a known kernel bug back in the scenario's kernel (repeatable).",
)
@click.option(
    "--bugs",
    "hunt_bugs",
    default=None,
    metavar="all|list|NAME[,NAME]",
    help="Hunt known-bug mutants with their stated budgets (fuzzer or explorer) "
    "and report, per bug, whether a checker found it; 'list' names them.",
)
@click.option(
    "--fixed",
    is_flag=True,
    help="With --bugs: also run each budget on the fixed model, which must stay clean.",
)
@click.option("--list", "list_", is_flag=True, help="List the built-in scenarios.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scenario.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress within a scenario on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Save the reports as JSON here (on Ctrl-C: by default {INTERRUPTED_OUT}).",
)
def explore_command(
    scenario,
    preemptions,
    random_runs,
    seed,
    max_schedules,
    features,
    conflict_resolution,
    bugs,
    hunt_bugs,
    fixed,
    list_,
    as_json,
    progress,
    out,
) -> None:
    """Explore interleavings of a built-in SCENARIO ("all" for every one).

    Reports schedules explored and every violation: a deadlock, a livelock,
    a lost byte, a broken invariant or a kernel warning, with the interleaving
    that led to it. Exits 1 if any violation was found, 130 on Ctrl-C (after
    printing and saving what was found so far, see --out).

    With --bugs, hunts known kernel bugs instead (see hmmsim.mutants): exits
    non-zero if a mutant escaped its budget or (--fixed) the fixed model
    failed one.
    """
    if hunt_bugs is not None:
        try:
            _hunt(hunt_bugs, fixed, as_json)
        except KeyboardInterrupt:
            raise Interrupted() from None  # each finished hunt is printed already
        return
    if list_ or scenario is None:
        for name, fn in SCENARIOS.items():
            click.echo(f"{name:<40} {fn.doc}")
        return
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    for n in names:
        if n not in SCENARIOS:
            raise click.UsageError(f"unknown scenario {n!r}; `hmmsim explore --list` names them")
    cfg = build_config(features, "mainline", conflict_resolution, ram_bytes=64 << 20)
    if progress is None:
        progress = stderr_is_tty()
    show = _Progress(
        "off" if not progress else "live" if stderr_is_tty() else "lines", max_schedules
    )
    reports: list[ExploreReport] = []
    tracker = None
    try:
        for name in names:
            feats = cfg.features | ({"b"} if "migration_entries" in name else set())
            added = sorted((SCENARIOS[name].needs | feats) - cfg.features)
            if added:
                # make_runner would add them silently; say so, since a reader
                # comparing series needs to know what actually ran.
                click.echo(
                    f"explore: {name} needs series {','.join(added)}: running with "
                    f"{','.join(sorted(feats | SCENARIOS[name].needs))}",
                    err=True,
                )
            run = make_runner(
                name,
                build_config(
                    feats,
                    "mainline",
                    conflict_resolution,
                    ram_bytes=cfg.ram_bytes,
                    hugetlb_pages=0,
                    bugs=frozenset(bugs),
                ),
            )
            tracker = _Tracker(name, -1 if random_runs else preemptions, show)
            counted = tracker.wrap(run)
            show.start(name)
            try:
                if random_runs:
                    report = ExploreReport(scenario=name, preemptions=-1)
                    for i in range(random_runs):
                        res = counted(RandomPolicy(seed + i))
                        report.schedules += 1
                        if res.error:
                            report.violations.append(res)
                else:
                    report = explore(
                        counted, preemptions=preemptions, max_schedules=max_schedules, name=name
                    )
            finally:
                show.stop()
            tracker = None
            reports.append(report)
            _print_report(report, as_json, max_schedules)
    except KeyboardInterrupt:
        if tracker is not None:
            partial = tracker.report()
            reports.append(partial)
            _print_report(partial, as_json, max_schedules, interrupted=True)
        path = out or Path(INTERRUPTED_OUT)
        _save(reports, path, interrupted=True)
        click.echo(
            f"interrupted: {len(reports)} of {len(names)} scenario report(s) saved to {path}",
            err=True,
        )
        raise Interrupted() from None
    if out is not None:
        _save(reports, out, interrupted=False)
    if any(r.violations for r in reports):
        raise SystemExit(1)


def _print_report(report: ExploreReport, as_json: bool, max_schedules: int, interrupted=False):
    if as_json:
        d = report.as_dict()
        if interrupted:
            d["interrupted"] = True
        click.echo(json.dumps(d))
        return
    if interrupted:
        state = "interrupted"
    else:
        state = "complete" if report.complete else f"stopped at {max_schedules}"
    click.echo(
        f"{report.scenario}: {report.schedules} schedules ({state}), "
        f"{len(report.violations)} violation(s)"
    )
    for v in report.violations[:3]:
        click.echo(f"  {v.error}\n  schedule choices: {v.choices}")
        click.echo(v.format_trace(20))


def _save(reports: list[ExploreReport], path: Path, interrupted: bool) -> None:
    data = {"interrupted": interrupted, "reports": [r.as_dict() for r in reports]}
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise click.FileError(str(path), hint=e.strerror or str(e)) from None


def _hunt(spec: str, fixed: bool, as_json: bool) -> None:
    """`--bugs`: run each named mutant's hunt and report."""
    from hmmsim.testing.mutant_hunt import HUNTS, hunt

    if spec == "list":
        for name, m in MUTANTS.items():
            click.echo(f"{name:<30} {m.origin}\n{'':<30} {HUNTS[name].budget()}")
        return
    names = list(MUTANTS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in MUTANTS]
    if unknown or not names:
        raise click.UsageError(
            f"unknown bug {unknown or spec!r}; `hmmsim explore --bugs list` names them"
        )
    failed = False
    for name in names:
        results = [hunt(name)]
        if fixed:
            results.append(hunt(name, fixed=True))
        failed |= not results[0].found or (fixed and results[1].found)
        if as_json:
            for r in results:
                click.echo(json.dumps(r.to_json()))
            continue
        r = results[0]
        verdict = "FOUND" if r.found else "ESCAPED"
        click.echo(
            f"{name}: {verdict} by {r.by} in {r.used} ({r.seconds:.1f} s); budget: {r.budget}"
        )
        if r.detail:
            click.echo(f"  {r.detail[:400]}")
        if fixed:
            f = results[1]
            state = "clean" if not f.found else f"FAILED: {f.detail[:300]}"
            click.echo(f"  fixed model, same budget: {state} ({f.used}, {f.seconds:.1f} s)")
    if failed:
        raise SystemExit(1)
