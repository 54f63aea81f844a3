"""`hmmsim explore SCENARIO`: run a concurrency scenario under many schedules."""

from __future__ import annotations

import json

import click

from hmmsim.kconfig import SERIES, ConfigError, KConfig
from hmmsim.mutants import MUTANTS
from hmmsim.testing.explore import RandomPolicy, explore
from hmmsim.testing.scenarios import SCENARIOS, make_runner


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
@click.option(
    "--feature",
    "features",
    multiple=True,
    type=click.Choice(sorted(SERIES)),
    help="Enable a seed series (repeatable).",
)
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
def explore_command(
    scenario,
    preemptions,
    random_runs,
    seed,
    max_schedules,
    features,
    bugs,
    hunt_bugs,
    fixed,
    list_,
    as_json,
) -> None:
    """Explore interleavings of a built-in SCENARIO ("all" for every one).

    Reports schedules explored and every violation: a deadlock, a livelock,
    a lost byte, a broken invariant or a kernel warning, with the interleaving
    that led to it. Exits non-zero if any violation was found.

    With --bugs, hunts known kernel bugs instead (see hmmsim.mutants): exits
    non-zero if a mutant escaped its budget or (--fixed) the fixed model
    failed one.
    """
    if hunt_bugs is not None:
        _hunt(hunt_bugs, fixed, as_json)
        return
    if list_ or scenario is None:
        for name, fn in SCENARIOS.items():
            click.echo(f"{name:<40} {fn.doc}")
        return
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    for n in names:
        if n not in SCENARIOS:
            raise click.UsageError(f"unknown scenario {n!r}; `hmmsim explore --list` names them")
    try:
        cfg = KConfig(ram_bytes=64 << 20, hugetlb_pages=0, features=frozenset({"d", *features}))
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    failed = False
    for name in names:
        feats = cfg.features | ({"b"} if "migration_entries" in name else set())
        run = make_runner(
            name,
            KConfig(
                ram_bytes=cfg.ram_bytes,
                hugetlb_pages=0,
                features=frozenset(feats),
                bugs=frozenset(bugs),
            ),
        )
        if random_runs:
            from hmmsim.testing.explore import ExploreReport

            report = ExploreReport(scenario=name, preemptions=-1)
            for i in range(random_runs):
                res = run(RandomPolicy(seed + i))
                report.schedules += 1
                if res.error:
                    report.violations.append(res)
        else:
            report = explore(run, preemptions=preemptions, max_schedules=max_schedules, name=name)
        failed |= bool(report.violations)
        if as_json:
            click.echo(json.dumps(report.as_dict()))
            continue
        state = "complete" if report.complete else f"stopped at {max_schedules}"
        click.echo(
            f"{name}: {report.schedules} schedules ({state}), {len(report.violations)} violation(s)"
        )
        for v in report.violations[:3]:
            click.echo(f"  {v.error}\n  schedule choices: {v.choices}")
            click.echo(v.format_trace(20))
    if failed:
        raise SystemExit(1)


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
