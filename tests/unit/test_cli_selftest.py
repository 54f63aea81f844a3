"""`hmmsim selftest`: filters, TAP and JSON output, exit codes, user errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.selftests import harness as h
from hmmsim.selftests import hmm_tests


def run(*args):
    return CliRunner().invoke(main, ["selftest", *args])


def tap_results(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith(("ok ", "not ok "))]


def test_list_names_every_case_in_harness_order():
    r = run("-l")
    assert r.exit_code == 0, r.output
    names = r.output.split()
    assert len(names) == 76
    assert names[0] == "hmm.hmm_device_private.open_close"
    assert names[35] == "hmm.hmm_device_coherent.open_close"
    assert names[70:] == [
        "hmm2.hmm2_device_private.migrate_mixed",
        "hmm2.hmm2_device_private.snapshot",
        "hmm2.hmm2_device_private.double_map",
        "hmm2.hmm2_device_coherent.migrate_mixed",
        "hmm2.hmm2_device_coherent.snapshot",
        "hmm2.hmm2_device_coherent.double_map",
    ]


def test_filters_select_like_the_kernel_harness():
    assert len(run("-l", "-t", "open_close").output.split()) == 2
    assert len(run("-l", "-f", "hmm2").output.split()) == 6
    assert len(run("-l", "-v", "hmm2_device_coherent").output.split()) == 3
    # filters add up: a case runs if any filter matches it
    out = run("-l", "-t", "snapshot", "-r", "hmm.hmm_device_private.open_close").output.split()
    assert out == [
        "hmm.hmm_device_private.open_close",
        "hmm2.hmm2_device_private.snapshot",
        "hmm2.hmm2_device_coherent.snapshot",
    ]


def test_tap_output_has_the_kselftest_shape():
    r = run("-r", "hmm.hmm_device_private.open_close", "-r", "hmm.hmm_device_coherent.open_close")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "TAP version 13",
        "1..2",
        "# Starting 2 tests from 2 test cases.",
        "#  RUN           hmm.hmm_device_private.open_close ...",
        "#            OK  hmm.hmm_device_private.open_close",
        "ok 1 hmm.hmm_device_private.open_close",
        "#  RUN           hmm.hmm_device_coherent.open_close ...",
        "#            OK  hmm.hmm_device_coherent.open_close",
        "ok 2 hmm.hmm_device_coherent.open_close",
        "# PASSED: 2 / 2 tests passed.",
        "# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0",
    ]


def test_json_is_one_object_per_case_then_the_configuration():
    r = run("-t", "open_close", "--json", "--feature", "a")
    assert r.exit_code == 0, r.output
    objs = [json.loads(ln) for ln in r.output.splitlines()]
    *cases, summary = objs
    assert [o["name"] for o in cases] == [
        "hmm.hmm_device_private.open_close",
        "hmm.hmm_device_coherent.open_close",
    ]
    for o in cases:
        assert set(o) == {"name", "result", "seconds", "message"}
        assert o["result"] == "pass" and o["message"] == "" and o["seconds"] >= 0
    assert summary["config"] == {
        "kernel": "mainline",
        "features": "ad",
        "conflict_resolution": None,
        "pvmw_form": None,
        "ram_bytes": 1 << 30,
        "hugetlb_pages": 4,
        "bugs": [],
    }
    assert summary["cases"] == summary["run"] == summary["passed"] == 2
    assert summary["results"] == {"pass": 2} and summary["interrupted"] is False


# --- a failing case, registered only here ------------------------------------------------------
def _failing_fixtures():
    fx = h.FIXTURE("inject")
    h.FIXTURE_VARIANT_ADD(fx, "only")

    @h.TEST_F(fx)
    def passes(_metadata, self, variant):
        h.ASSERT_EQ(1, 1)

    @h.TEST_F(fx)
    def fails(_metadata, self, variant):
        ret = 3
        h.EXPECT_EQ(ret, 4)
        h.ASSERT_EQ(ret, 5)
        h.ASSERT_EQ(0, 1)  # not reached: the ASSERT above stops the test

    @h.TEST_F(fx)
    def skips(_metadata, self, variant):
        h.SKIP("nothing to do")

    @h.TEST_F(fx)
    def array_mismatch(_metadata, self, variant):
        i = np.arange(8)
        ptr = i.copy()
        ptr[5] = 42
        h.ASSERT_EQ(ptr[i], i)

    return (fx,)


@pytest.fixture
def injected(monkeypatch):
    monkeypatch.setattr(hmm_tests, "FIXTURES", _failing_fixtures())


def test_a_failing_case_makes_the_command_fail(injected):
    r = run()
    assert r.exit_code == 1, r.output
    assert tap_results(r.output) == [
        "ok 1 inject.only.passes",
        "not ok 2 inject.only.fails",
        "ok 3 inject.only.skips # SKIP nothing to do",
        "not ok 4 inject.only.array_mismatch",
    ]
    out = r.output
    assert "#          FAIL  inject.only.fails" in out
    assert ":fails:Expected ret (3) == 4 (4)" in out  # the EXPECT, logged
    assert ":fails:Expected ret (3) == 5 (5)" in out  # the ASSERT that stopped it
    assert "Expected 0 (0) == 1 (1)" not in out
    assert "#      SKIP      nothing to do" in out
    assert "Expected ptr[i] (42) == i (5) [element 5 of 8; 1 differ]" in out
    assert "# FAILED: 2 / 4 tests passed." in out
    assert "# 1 skipped test(s) detected." in out
    assert "# Totals: pass:1 fail:2 xfail:0 xpass:0 skip:1 error:0" in out
    assert "Traceback" not in out


def test_a_passing_selection_exits_zero_even_with_failures_elsewhere(injected):
    r = run("-t", "passes")
    assert r.exit_code == 0, r.output


def test_json_reports_the_failure(injected):
    r = run("--json", "-t", "fails", "-t", "skips")
    assert r.exit_code == 1
    *cases, summary = map(json.loads, r.output.splitlines())
    objs = {o["name"]: o for o in cases}
    assert summary["results"] == {"fail": 1, "skip": 1} and summary["passed"] == 1
    assert objs["inject.only.fails"]["result"] == "fail"
    assert objs["inject.only.fails"]["message"].endswith(":fails:Expected ret (3) == 5 (5)")
    assert objs["inject.only.skips"] == {
        **objs["inject.only.skips"],
        "result": "skip",
        "message": "nothing to do",
    }


@pytest.mark.parametrize(
    "args",
    [
        ("-t", "no_such_test"),
        ("-r", "hmm.hmm_device_private"),
        ("-f", "hmm3"),
        ("--feature", "c"),
        ("--feature", "z"),
        ("--ram", "lots"),
    ],
)
def test_user_errors_are_one_line(args):
    r = run(*args)
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmsim: error:"), r.output
    assert "Traceback" not in r.output


def test_harness_xfail_reports_like_xfail_add():
    lines: list[str] = []
    results = h.run_tests(
        _failing_fixtures(),
        hmm_tests.make_kernel,
        filters=h.Filters(tests=("fails", "passes")),
        out=lines.append,
        xfail=("inject.only.fails", "inject.only.passes"),
    )
    assert [r.result for r in results] == ["xpass", "xfail"]
    assert "ok 1 inject.only.passes # XPASS unknown" in lines
    assert any(ln.startswith("ok 2 inject.only.fails # XFAIL ") for ln in lines)
    assert lines[-2:] == [
        "# PASSED: 2 / 2 tests passed.",
        "# Totals: pass:0 fail:0 xfail:1 xpass:1 skip:0 error:0",
    ]


def test_series_e_adds_migrate_on_fault_to_the_suite():
    """hmm-tests.c under series (e) has the migrate_on_fault case the series
    adds; without (e) the suite is the pinned 76."""
    r = run("-l", "--feature", "e")
    assert r.exit_code == 0, r.output
    names = r.output.split()
    assert len(names) == 78
    assert "hmm.hmm_device_private.migrate_on_fault" in names
    r = run("-l")
    assert len(r.output.split()) == 76 and "migrate_on_fault" not in r.output
    r = run("-t", "migrate_on_fault", "--feature", "e")
    assert r.exit_code == 0, r.output
    assert "# PASSED: 2 / 2 tests passed." in r.output
