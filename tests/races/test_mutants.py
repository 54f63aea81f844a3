"""Known kernel bugs as mutants: each is found by a generic search within its
stated budget (hmmsim.testing.mutant_hunt.HUNTS), and the fixed model runs
the same budget clean.

The budgets are the ones in HUNTS, printed by `hmmsim explore --bugs list`:
explorer hunts are exhaustive searches with 1 preemption and at most 200-400
schedules; fuzz hunts are 2000-3000 steps on seeds 0 and 1; the series (e)
walk fuzzer gets 20 fresh address spaces.
"""

import json

import pytest
from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.kconfig import ConfigError, KConfig
from hmmsim.mutants import MUTANTS
from hmmsim.testing.mutant_hunt import HUNTS, hunt


def test_every_mutant_has_a_hunt_and_a_kernel_origin():
    assert set(HUNTS) == set(MUTANTS)
    assert len(MUTANTS) >= 10
    for m in MUTANTS.values():
        assert m.origin and m.where and m.bug and m.fix
    history = [m for m in MUTANTS.values() if not m.origin.startswith("known-bugs")]
    assert len(history) >= 2  # at least two from the kernel's git history


def test_unknown_bug_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown bug"):
        KConfig(bugs=frozenset({"no_such_bug"}))


@pytest.mark.parametrize("bug", sorted(MUTANTS))
def test_mutant_is_found_within_its_budget(bug):
    r = hunt(bug)
    assert r.found, f"{bug} escaped: {r.budget}, used {r.used}"
    assert r.detail  # what the checker said
    # the detection is a checker's verdict, never the mutant's name
    assert bug not in r.detail


# A fuzz/explore campaign per mutant on the fixed kernel (about 3 minutes in all):
# opt-in with the other long runs (pytest -m slow), to keep CI inside its budget.
@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(MUTANTS))
def test_fixed_model_runs_the_same_budget_clean(bug):
    r = hunt(bug, fixed=True)
    assert not r.found, r.detail


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_bugs_list_and_errors():
    r = run("explore", "--bugs", "list")
    assert r.exit_code == 0
    for name in MUTANTS:
        assert name in r.output
    r = run("explore", "--bugs", "no_such_bug")
    assert r.exit_code == 2 and "unknown bug" in r.output and "Traceback" not in r.output


def test_cli_bugs_json_reports_each_bug():
    r = run("explore", "--bugs", "hmm_zero_pfn0,hmm_fault_spin", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert [x["bug"] for x in rows] == ["hmm_zero_pfn0", "hmm_fault_spin"]
    assert all(x["found"] and x["model"] == "mutant" and x["budget"] for x in rows)
    assert rows[1]["by"] == "explore" and "livelock" in rows[1]["detail"]


def test_cli_scenario_and_fuzz_take_a_bug(tmp_path):
    r = run("explore", "thp_split_vs_fault_page", "-p", "1", "--bug", "split_fault_lock_handoff")
    assert r.exit_code == 1 and "violation" in r.output
    out = tmp_path / "replay.py"
    r = run(
        "fuzz", "--steps", "400", "--seed", "0", "--bug", "exclusive_drops_mapcount",
        "--json", "--out", str(out), "--shrink-seconds", "5",
    )  # fmt: skip
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert data["bugs"] == ["exclusive_drops_mapcount"] and data["violations"]
    assert "_mapcount" in data["violations"][0]["message"]
    assert "bugs=frozenset(['exclusive_drops_mapcount'])" in out.read_text()
