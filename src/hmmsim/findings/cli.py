"""`hmmsim findings`: list the bugs hmmsim found, replay them, run their selftests.

- `hmmsim findings` (or `findings list`): one line per finding: name, kind,
  status, the outcome its replay has today, the title. `--json` prints the
  records.
- `hmmsim findings replay NAME` (or `--all`): runs the replay on a fresh
  model, prints the outcome and the documented one; exits 0 when they agree
  (an open bug reproduces, a fixed one runs clean) and 1 when they do not
  (the finding's status in docs/findings.md needs updating).
- `hmmsim findings selftest`: the hmm-tests.c-style cases of the findings
  (hmmsim.selftests.findings), in TAP; a case of an open upstream bug is
  XFAIL with the finding as its reason. Exits 1 if a case fails, passes
  although its finding is open, or fails other than documented.
"""

from __future__ import annotations

import json
import sys

import click

from hmmsim.cli_options import conflict_option, feature_option


def _record(f) -> dict:
    return {
        "name": f.name,
        "title": f.title,
        "kind": f.kind,
        "status": f.status,
        "found_by": f.found_by,
        "where": f.where,
        "expect": f.expect,
        "match": f.match,
        "tests": f.tests,
        "selftest": f.selftest,
        "fix_switch": f.fix_switch,
        "script": f"fuzz-findings/{f.name}.py",
        "doc": f"docs/findings.md#{f.name}",
    }


@click.group("findings", invoke_without_command=True)
@click.pass_context
def findings_group(ctx: click.Context) -> None:
    """The bugs hmmsim found (upstream and in the model): list, replay, selftest.

    Without a subcommand: the list. docs/findings.md tells each one's story.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@findings_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as one JSON array.")
def list_command(as_json: bool = False) -> None:
    """One line per finding: name, kind, status, expected replay outcome, title."""
    from hmmsim.findings import FINDINGS

    if as_json:
        click.echo(json.dumps([_record(f) for f in FINDINGS.values()], indent=2))
        return
    width = max(len(n) for n in FINDINGS)
    for f in FINDINGS.values():
        click.echo(f"{f.name:<{width}}  {f.kind:<8} {f.status:<8} {f.expect:<10} {f.title}")


@findings_group.command("replay")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Replay every finding.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per replay.")
def replay_command(name: str | None, all_: bool, as_json: bool) -> None:
    """Reproduce finding NAME on the model and compare with its documented outcome.

    Exit status 0: every outcome is the documented one; 1: at least one is
    not (an open bug stopped reproducing, or a fixed one came back).
    """
    from hmmsim.findings import FINDINGS, replay

    if all_ == (name is not None):
        raise click.UsageError("give a finding NAME or --all (`hmmsim findings` lists them)")
    if name is not None and name not in FINDINGS:
        raise click.UsageError(f"no finding {name!r}; `hmmsim findings` lists them")
    names = list(FINDINGS) if all_ else [name]
    bad = 0
    for n in names:
        f = FINDINGS[n]
        out = replay(n)
        agrees = out.matches(f)
        bad += not agrees
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "name": n,
                        "outcome": out.kind,
                        "detail": out.detail,
                        "expect": f.expect,
                        "as_documented": agrees,
                    }
                )
            )
            continue
        verdict = "as documented" if agrees else "NOT as documented"
        click.echo(f"{n}: {out.kind} ({verdict}: {f.expect}; {f.kind}, {f.status})")
        if out.detail:
            for line in out.detail.splitlines()[:6]:
                click.echo(f"  {line}")
    if bad:
        sys.exit(1)


@findings_group.command("selftest")
@click.option("-l", "--list", "list_only", is_flag=True, help="List the cases and exit.")
@feature_option()
@conflict_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per case instead of TAP.")
def selftest_command(
    list_only: bool, features: tuple[str, ...], conflict_resolution: str | None, as_json: bool
) -> None:
    """The findings suite: hmm-tests.c-style cases of the upstream findings (TAP).

    A case of an open upstream bug reports XFAIL (the kernel at the pin
    fails it too); it must fail exactly as docs/findings.md says.
    """
    from hmmsim.cli_options import build_config, check_host_memory, kernel_host_bytes
    from hmmsim.selftests.findings import FIXTURES, check_expected_failures, expected_failures
    from hmmsim.selftests.harness import all_cases, run_tests
    from hmmsim.selftests.hmm_tests import SELFTEST_RAM_BYTES, make_kernel, post_checks

    if list_only:
        for c in all_cases(FIXTURES):
            click.echo(c.name)
        return
    # the kernel `hmmsim selftest` builds: series (d) (unless no-d) plus --feature
    check_host_memory(kernel_host_bytes(SELFTEST_RAM_BYTES), "the selftest kernel's 1G of RAM")
    cfg = build_config(features, "mainline", conflict_resolution, ram_bytes=SELFTEST_RAM_BYTES)
    xfail = expected_failures(cfg.features)

    def on_result(r) -> None:
        if as_json:
            data = r.as_json()
            if r.name in xfail:
                data["reason"] = xfail[r.name][0]
            click.echo(json.dumps(data))

    results = run_tests(
        FIXTURES,
        lambda: make_kernel(cfg),
        post_checks=post_checks,
        out=None if as_json else click.echo,
        on_result=on_result,
        xfail=xfail,
    )
    problems = check_expected_failures(results, cfg.features)
    for p in problems:
        click.echo(f"# {p}", err=as_json)
    if problems or any(not r.passed for r in results):
        sys.exit(1)
