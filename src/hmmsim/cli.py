"""The `hmmsim` command.

Subcommands: `info` (the pinned kernel, feature switches, memory sizes) and
`demo` (a narrated walk through faults, fork/COW, mprotect and munmap with
the real page-table words). `selftest` runs the hmm-tests.c port
(hmmsim.selftests) and prints TAP. Errors a user can cause print one line
and exit non-zero; no traceback.
"""

from __future__ import annotations

import json
import sys

import click

from hmmsim import __version__
from hmmsim.kconfig import (
    KERNEL_COMMIT,
    KERNEL_TAG,
    KERNEL_TREE,
    KERNELS,
    SERIES,
    SERIES_ABSENT,
    ConfigError,
    KConfig,
)


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


def _make_config(features: tuple[str, ...], ram: str, kernel: str = "mainline") -> KConfig:
    """The KConfig of a command: series (d) (merged at the pin) plus `features`,
    for the `kernel` profile; a series that profile lacks is a usage error."""
    absent = sorted(set(features) & set(SERIES_ABSENT.get(kernel, ())))
    if absent:
        raise click.UsageError(
            f"series {', '.join(absent)} did not exist in Linux {kernel}: "
            f"drop --feature {' --feature '.join(absent)} or --kernel {kernel}"
        )
    merged = {"d"} - set(SERIES_ABSENT.get(kernel, ()))
    try:
        return KConfig(
            features=frozenset({*merged, *features}), ram_bytes=_parse_size(ram), kernel=kernel
        )
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


feature_option = click.option(
    "--feature",
    "features",
    multiple=True,
    type=click.Choice(sorted(SERIES)),
    help="Enable a seed series (repeatable): " + "; ".join(f"{k}: {v}" for k, v in SERIES.items()),
)
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
    """A group whose usage errors print one line, with no usage dump or traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"hmmsim: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("hmmsim: aborted", err=True)
            sys.exit(1)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hmmsim")
def main() -> None:
    """hmmsim: an executable model of Linux HMM and device-memory migration."""


@main.command()
@feature_option
@ram_option
@kernel_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(features: tuple[str, ...], ram: str, kernel: str, as_json: bool) -> None:
    """Show the pinned kernel, the seed-series switches and memory sizes."""
    import time

    from hmmsim.kernel import Kernel

    cfg = _make_config(features, ram, kernel)
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
        "bits_per_long": cfg.bits_per_long,
        "memory": mem,
        "metadata_bytes_per_page": mem["struct_page_bytes"],
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
    click.echo(
        f"RAM        {mem['ram_bytes'] >> 20} MiB = {mem['ram_pages']} pages "
        f"({mem['free_pages']} free)"
    )
    click.echo(
        f"metadata   {mem['struct_page_bytes']} bytes per 4 KiB page "
        f"({mem['metadata_bytes'] >> 20} MiB in all; the kernel's struct page is 64)"
    )
    click.echo(f"hugetlb    {mem['hugetlb_pages']} x 2 MiB pages ({mem['hugetlb_free']} free)")
    click.echo(f"THP        enabled=[{k.thp_enabled}]")
    click.echo(f"boot       Kernel() took {boot * 1000:.1f} ms")


@main.command()
@feature_option
@kernel_option
def demo(features: tuple[str, ...], kernel: str) -> None:
    """A narrated walk: faults, fork with COW, mprotect, munmap, THP."""
    from hmmsim.demo import run_demo

    run_demo(_make_config(features, "64M", kernel), click.echo)


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
@click.option("--ram", default="1G", show_default=True, help="Modelled RAM size.")
@kernel_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per case instead of TAP.")
def selftest(
    runs: tuple[str, ...],
    tests: tuple[str, ...],
    variants: tuple[str, ...],
    fixtures: tuple[str, ...],
    list_only: bool,
    features: tuple[str, ...],
    ram: str,
    kernel: str,
    as_json: bool,
) -> None:
    """Run tools/testing/selftests/mm/hmm-tests.c against the model (TAP output).

    Every case runs on a fresh kernel with test_hmm loaded; the filters work
    like the kernel harness's (a case runs if it matches any of them). Cases
    that fail on the kernel too (hmm_tests.KNOWN_FAILURES) report XFAIL. Exits
    non-zero if a case fails.
    """
    from hmmsim.selftests.harness import Filters, all_cases, run_tests, select_cases
    from hmmsim.selftests.hmm_tests import FIXTURES, KNOWN_FAILURES, make_kernel, post_checks

    cfg = _make_config(features, ram, kernel)
    cases = all_cases(FIXTURES)
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
        for c in select_cases(FIXTURES, filters):
            click.echo(c.name)
        return

    def on_result(r) -> None:
        if as_json:
            click.echo(json.dumps(r.as_json()))

    results = run_tests(
        FIXTURES,
        lambda: make_kernel(cfg),
        filters=filters,
        post_checks=post_checks,
        out=None if as_json else click.echo,
        on_result=on_result,
        xfail=KNOWN_FAILURES,
    )
    if any(not r.passed for r in results):
        sys.exit(1)


def _opt_what(opt: str) -> str:
    return {"-f": "fixture", "-v": "variant", "-t": "test", "-r": "case"}[opt]


def _register() -> None:
    """The commands that live beside the code they drive."""
    from hmmsim.bench_cli import bench_command
    from hmmsim.oracle.cli import oracle
    from hmmsim.scenario.cli import run_command, scenario_group
    from hmmsim.testing.explore_cli import explore_command
    from hmmsim.testing.fuzz_cli import fuzz

    for cmd in (explore_command, fuzz, bench_command, oracle, run_command, scenario_group):
        main.add_command(cmd)


_register()
