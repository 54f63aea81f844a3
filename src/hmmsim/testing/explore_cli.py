"""`hmmsim explore SCENARIO`: run a concurrency scenario under many schedules."""

from __future__ import annotations

import json

import click

from hmmsim.kconfig import SERIES, ConfigError, KConfig
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
@click.option("--list", "list_", is_flag=True, help="List the built-in scenarios.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scenario.")
def explore_command(
    scenario, preemptions, random_runs, seed, max_schedules, features, list_, as_json
) -> None:
    """Explore interleavings of a built-in SCENARIO ("all" for every one).

    Reports schedules explored and every violation: a deadlock, a livelock,
    a lost byte, a broken invariant or a kernel warning, with the interleaving
    that led to it. Exits non-zero if any violation was found.
    """
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
            name, KConfig(ram_bytes=cfg.ram_bytes, hugetlb_pages=0, features=frozenset(feats))
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
