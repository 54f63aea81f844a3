"""The `hmmsim` command.

Subcommands: `info` (the pinned kernel, feature switches, memory sizes),
`demo` (narrated device migration and CPU tours with the real page-table
words; hmmsim.demo) and `explain` (decode one word; hmmsim.explain).
`selftest` runs the hmm-tests.c port
(hmmsim.selftests) and prints TAP. Errors a user can cause print one line
and exit non-zero; no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import click

from hmmsim import __version__
from hmmsim.cli_options import (
    build_config,
    check_host_memory,
    config_json,
    conflict_option,
    data_plane_option,
    guarded_main,
    kernel_host_bytes,
    page_host_bytes,
)
from hmmsim.cli_options import feature_option as _feature_option
from hmmsim.kconfig import KERNEL_COMMIT, KERNEL_TAG, KERNEL_TREE, KERNELS, SERIES, KConfig


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib")
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        value = int(t) * mult
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 256M or 4G") from None
    return value


def _make_config(
    features: tuple[str, ...],
    ram: str,
    kernel: str = "mainline",
    conflict_resolution: str | None = None,
    **fields,
) -> KConfig:
    """The KConfig of a command: series (d) (merged at the pin; `--feature
    no-d` removes it) plus `features`, for the `kernel` profile. A series the
    profile lacks, (c)+(e) without a conflict resolution, or a --ram the host
    cannot hold is a usage error (one line); the host memory is counted for
    the KConfig.data_plane in `fields`."""
    ram_bytes = _parse_size(ram)
    plane = fields.get("data_plane", "bytes")
    check_host_memory(kernel_host_bytes(ram_bytes, plane), f"--ram {ram}")
    return build_config(features, kernel, conflict_resolution, ram_bytes=ram_bytes, **fields)


#: --feature (repeatable or comma-separated, see hmmsim.cli_options); its
#: value is a tuple of letters with `.off` for `no-d`. Pass it on to
#: _make_config together with --conflict-resolution (`conflict_option`).
feature_option = _feature_option()
ram_option = click.option("--ram", default="256M", show_default=True, help="Modelled RAM size.")
kernel_option = click.option(
    "--kernel",
    type=click.Choice(sorted(KERNELS)),
    default="mainline",
    show_default=True,
    help="Kernel profile: the pinned mainline, or the behaviours of Linux 6.12 where they "
    "differ (docs/kernel-versions.md; series d did not exist in 6.12).",
)


class OneLineErrors(click.Group):
    """A group whose errors print one line, with no usage dump or traceback:
    usage errors (exit 2; a --ram or --size the host cannot hold too), the
    host running out of memory during a run (3), Ctrl-C (130). See
    hmmsim.cli_options.guarded_main."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        parent = super()
        return guarded_main(
            "hmmsim",
            lambda: parent.main(args, prog_name, complete_var, standalone_mode=False, **extra),
        )


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hmmsim")
def main() -> None:
    """hmmsim: an executable model of Linux HMM and device-memory migration.

    \b
    Exit status: 0 done; 1 a failure found (a failing selftest case, a fuzz
    or explore violation, an escaped mutant); 2 a usage error, a --ram or
    --size the host's memory cannot hold among them; 3 the host ran out of
    memory during the run; 130 interrupted (Ctrl-C; fuzz and explore print
    and save what they found first).
    """


@main.command()
@feature_option
@conflict_option
@ram_option
@kernel_option
@data_plane_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(
    features: tuple[str, ...],
    conflict_resolution: str | None,
    ram: str,
    kernel: str,
    data_plane: str,
    as_json: bool,
) -> None:
    """Show the pinned kernel, the seed-series switches, the data plane and memory sizes."""
    import time

    from hmmsim.kernel import Kernel

    cfg = _make_config(features, ram, kernel, conflict_resolution, data_plane=data_plane)
    t0 = time.perf_counter()
    k = Kernel(cfg)
    boot = time.perf_counter() - t0
    mem = k.memory_report()
    data = {
        "version": __version__,
        "kernel": {
            "tree": KERNEL_TREE,
            "commit": KERNEL_COMMIT,
            "tag": KERNEL_TAG,
            "profile": cfg.kernel,
            "profile_description": KERNELS[cfg.kernel],
        },
        "features": {s: (s in cfg.features) for s in sorted(SERIES)},
        "conflict_resolution": cfg.conflict_resolution,
        "bits_per_long": cfg.bits_per_long,
        "memory": mem,
        "metadata_bytes_per_page": mem["struct_page_bytes"],
        "data_plane": cfg.data_plane,
        "host_bytes_per_page": page_host_bytes(cfg.data_plane),
        "host_bytes": kernel_host_bytes(mem["ram_bytes"], cfg.data_plane),
        "kernel_create_seconds": round(boot, 4),
        "thp_enabled": k.thp_enabled,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"hmmsim {__version__}")
    click.echo(f"kernel     {KERNEL_TREE} @ {KERNEL_COMMIT}  ({KERNEL_TAG})")
    click.echo(f"profile    {cfg.kernel}: {KERNELS[cfg.kernel]}")
    for s, desc in SERIES.items():
        mark = "on " if s in cfg.features else "off"
        click.echo(f"series {s}   [{mark}] {desc}")
    if cfg.conflict_resolution:
        click.echo(f"(c)+(e)    conflict resolution {cfg.conflict_resolution}")
    click.echo(
        f"RAM        {mem['ram_bytes'] >> 20} MiB = {mem['ram_pages']} pages "
        f"({mem['free_pages']} free)"
    )
    click.echo(
        f"metadata   {mem['struct_page_bytes']} bytes per 4 KiB page "
        f"({mem['metadata_bytes'] >> 20} MiB in all; the kernel's struct page is 64)"
    )
    per_page = page_host_bytes(cfg.data_plane)
    click.echo(
        f"data plane {cfg.data_plane}: at most {per_page} host bytes per page "
        f"({kernel_host_bytes(mem['ram_bytes'], cfg.data_plane) >> 20} MiB for this RAM)"
    )
    click.echo(f"hugetlb    {mem['hugetlb_pages']} x 2 MiB pages ({mem['hugetlb_free']} free)")
    click.echo(f"THP        enabled=[{k.thp_enabled}]")
    click.echo(f"boot       Kernel() took {boot * 1000:.1f} ms")


@main.command()
@click.option(
    "-r", "runs", multiple=True, metavar="FIXTURE.VARIANT.TEST", help="Run this case (repeatable)."
)
@click.option("-t", "tests", multiple=True, metavar="TEST", help="Include this test (repeatable).")
@click.option(
    "-v", "variants", multiple=True, metavar="VARIANT", help="Include this variant (repeatable)."
)
@click.option(
    "-f", "fixtures", multiple=True, metavar="FIXTURE", help="Include this fixture (repeatable)."
)
@click.option("-l", "--list", "list_only", is_flag=True, help="List the cases and exit.")
@feature_option
@conflict_option
@click.option("--ram", default="1G", show_default=True, help="Modelled RAM size.")
@kernel_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per case instead of TAP (with the benchmark table of a benchmark "
    "case), then one with the run's configuration and totals.",
)
def selftest(
    runs: tuple[str, ...],
    tests: tuple[str, ...],
    variants: tuple[str, ...],
    fixtures: tuple[str, ...],
    list_only: bool,
    features: tuple[str, ...],
    conflict_resolution: str | None,
    ram: str,
    kernel: str,
    as_json: bool,
) -> None:
    """Run tools/testing/selftests/mm/hmm-tests.c against the model (TAP output).

    With a seed series that adds cases to hmm-tests.c (series e:
    migrate_on_fault), they run after the pinned 76. Every case runs on a
    fresh kernel with test_hmm loaded; the filters work
    like the kernel harness's (a case runs if it matches any of them). Cases
    that fail on the kernel too (hmm_tests.KNOWN_FAILURES) report XFAIL. Exits
    1 if a case fails, 130 on Ctrl-C (after the totals so far).
    """
    import time

    from hmmsim.cli_options import Interrupted
    from hmmsim.selftests.harness import Filters, all_cases, run_tests, select_cases
    from hmmsim.selftests.hmm_tests import (
        FIXTURES,
        KNOWN_FAILURES,
        make_kernel,
        post_checks,
        series_fixtures,
    )

    cfg = _make_config(features, ram, kernel, conflict_resolution)
    # the pinned suite, then the cases a seed series adds to hmm-tests.c
    suite = FIXTURES + series_fixtures(cfg)
    cases = all_cases(suite)
    known = {
        "-f": {c.fixture.name for c in cases},
        "-v": {c.variant.name for c in cases},
        "-t": {c.test.name for c in cases},
        "-r": {c.name for c in cases},
    }
    for opt, names in (("-f", fixtures), ("-v", variants), ("-t", tests), ("-r", runs)):
        for name in names:
            if name not in known[opt]:
                raise click.UsageError(
                    f"{opt} {name}: no such {_opt_what(opt)}; `hmmsim selftest -l` lists them"
                )
    filters = Filters(fixtures=fixtures, variants=variants, tests=tests, runs=runs)
    if list_only:
        for c in select_cases(suite, filters):
            click.echo(c.name)
        return
    done = []

    def on_result(r) -> None:
        done.append(r)
        if as_json:
            click.echo(json.dumps(r.as_json()))

    t0 = time.perf_counter()
    interrupted = False
    try:
        run_tests(
            suite,
            lambda: make_kernel(cfg),
            filters=filters,
            post_checks=post_checks,
            out=None if as_json else click.echo,
            on_result=on_result,
            xfail=KNOWN_FAILURES,
        )
    except KeyboardInterrupt:
        interrupted = True
    if as_json:
        counts: dict[str, int] = {}
        for r in done:
            counts[r.result] = counts.get(r.result, 0) + 1
        summary = {
            "config": config_json(cfg),
            "cases": len(select_cases(suite, filters)),
            "run": len(done),
            "passed": sum(r.passed for r in done),
            "results": counts,
            "seconds": round(time.perf_counter() - t0, 3),
            "interrupted": interrupted,
        }
        click.echo(json.dumps(summary))
    if interrupted:
        raise Interrupted()
    if any(not r.passed for r in done):
        sys.exit(1)


def _opt_what(opt: str) -> str:
    return {"-f": "fixture", "-v": "variant", "-t": "test", "-r": "case"}[opt]


def _register() -> None:
    """The commands that live beside the code they drive."""
    from hmmsim.bench_cli import bench_command
    from hmmsim.demo import demo_command
    from hmmsim.explain import explain_command
    from hmmsim.findings.cli import findings_group
    from hmmsim.oracle.cli import oracle
    from hmmsim.scenario.cli import run_command, scenario_group
    from hmmsim.testing.explore_cli import explore_command
    from hmmsim.testing.fuzz_cli import fuzz

    main.add_command(findings_group)
    for cmd in (explore_command, fuzz, bench_command, oracle, run_command, scenario_group):
        main.add_command(cmd)
    for cmd in (demo_command, explain_command):
        main.add_command(cmd)
    from hmmsim.sim.cli import sim_command, sweep_command

    main.add_command(sim_command)
    main.add_command(sweep_command)


def _interrupted_while_loading(_signum, _frame) -> None:
    """Ctrl-C while the commands' modules load (a second or so): no traceback."""
    sys.stderr.write("hmmsim: interrupted\n")
    os._exit(130)


_SIGINT = signal.getsignal(signal.SIGINT)
try:
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    _swapped = True
except ValueError:  # not the main thread: leave signals alone
    _swapped = False
_register()
if _swapped:  # loaded: Ctrl-C is KeyboardInterrupt again (guarded_main: 130)
    signal.signal(signal.SIGINT, _SIGINT if _SIGINT is not None else signal.default_int_handler)
