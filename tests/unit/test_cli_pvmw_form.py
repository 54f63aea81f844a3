"""--pvmw-form: series (c)'s page-walk marker form, on every command that
builds a kernel (hmmsim.cli_options.conflict_option)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hmmsim.cli import main


def _last_json(out: str) -> dict:
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def test_selftest_json_reports_the_pvmw_form():
    args = ["selftest", "-t", "anon_read", "--feature", "a,b,c", "--json"]
    r = CliRunner().invoke(main, [*args, "--pvmw-form", "pfn-bit"])
    assert r.exit_code == 0, r.output
    cfg = _last_json(r.output)["config"]
    assert cfg["pvmw_form"] == "pfn-bit"
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert _last_json(r.output)["config"]["pvmw_form"] == "flag"


def test_pvmw_form_needs_series_c():
    r = CliRunner().invoke(main, ["info", "--pvmw-form", "pfn-bit"])
    assert r.exit_code == 2
    assert "--pvmw-form needs series (c)" in r.output
    assert "Traceback" not in r.output


def test_pvmw_form_rejects_unknown_values():
    r = CliRunner().invoke(main, ["info", "--feature", "a,b,c", "--pvmw-form", "shifted"])
    assert r.exit_code == 2


def test_explore_says_which_series_it_adds():
    """A scenario that needs more series than asked runs with them and says so
    (on stderr, so --json output stays one object per scenario)."""
    args = ["explore", "fork_vs_eviction", "--feature", "b", "--random", "1"]
    r = CliRunner().invoke(main, args)
    assert "explore: fork_vs_eviction needs series a,c: running with a,b,c,d" in r.stderr
    r = CliRunner().invoke(
        main, ["explore", "fork_vs_eviction", "--feature", "a,b,c", "--random", "1"]
    )
    assert "needs series" not in r.stderr
