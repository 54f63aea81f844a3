"""The CLI never ends in a traceback (issue 15 part 2) and reaches every seed
combination (issue 14 item 6): host-memory checks, MemoryError, Ctrl-C
(exit 130, partial results printed and saved), explore's progress, the comma
form of --feature, --conflict-resolution everywhere, bench output when
piped, selftest --json's configuration and benchmark tables."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.selftests import harness as h
from hmmsim.selftests import hmm_tests
from hmmsim.testing import explore_cli
from hmmsim.testing import fuzz as fuzz_mod
from hmmsim.testing.explore import RunResult
from hmmsim.testing.fuzz import FuzzReport, SeqConfig, Violation
from hmmsim.testing.fuzz import runner as fuzz_runner

SCN = Path(__file__).parents[1] / "corpus" / "hand"


def run(*args):
    return CliRunner().invoke(main, list(args))


def one_line_error(r, code: int) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmsim: "), r.output
    return lines[0]


def test_help_names_the_exit_statuses():
    out = " ".join(run("--help").output.split())
    for status in ("0 done", "1 a failure found", "2 a usage error", "3 the host ran out", "130"):
        assert status in out, out


# --- sizes the host cannot hold -------------------------------------------------------------
@pytest.fixture
def small_host(monkeypatch):
    """A host with 8 GiB available, whatever this machine has."""
    monkeypatch.setattr("hmmsim.cli_options.host_memory_available", lambda: 8 << 30)


@pytest.mark.parametrize(
    "args",
    [
        ("info", "--ram", "64G"),
        ("selftest", "--ram", "512G"),
        ("selftest", "--ram", "512G", "-l"),
        ("info", "--ram", "9G"),
        ("bench", "--size", "64G"),
    ],
)
def test_sizes_beyond_the_host_are_one_line(small_host, args):
    line = one_line_error(run(*args), 2)
    assert "host memory" in line and "8.0 GiB available" in line, line


def test_sizes_within_the_host_run(small_host):
    r = run("info", "--ram", "1G", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["memory"]["ram_bytes"] == 1 << 30


def test_host_memory_is_read_from_the_host():
    from hmmsim.cli_options import host_memory_available

    avail = host_memory_available()
    assert avail is None or avail > 0


def test_a_memory_error_anywhere_is_one_line(monkeypatch):
    from hmmsim.kernel import Kernel

    def oom(self, *a, **kw):
        raise MemoryError("Unable to allocate 3.0 GiB for an array")

    monkeypatch.setattr(Kernel, "__init__", oom)
    for args in (("info",), ("demo",)):
        line = one_line_error(run(*args), 3)
        assert "the host ran out of memory (Unable to allocate 3.0 GiB" in line, line
    # the selftest's TAP so far, then the one line
    r = run("selftest", "-r", "hmm.hmm_device_private.open_close")
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    assert r.output.splitlines()[-1].startswith("hmmsim: error: the host ran out of memory")


def test_a_refused_write_is_one_line(monkeypatch):
    """Output to a full disk (e.g. `hmmsim demo > /dev/full`) ends in one line."""
    from hmmsim.kernel import Kernel

    def full(self, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Kernel, "__init__", full)
    line = one_line_error(run("info"), 1)
    assert line == "hmmsim: error: [Errno 28] No space left on device"


# --- Ctrl-C -------------------------------------------------------------------------------
def test_ctrl_c_exits_130(monkeypatch):
    from hmmsim.kernel import Kernel

    def interrupt(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Kernel, "__init__", interrupt)
    r = run("info")
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == "hmmsim: interrupted"


def _fake_violation() -> Violation:
    return Violation(
        signature="invariant:fake",
        message="a planted violation",
        cfg=SeqConfig(),
        sequence=0,
        seed=7,
        original_steps=40,
        ops=[],
        script="print('replay of the planted violation')\n",
    )


def _interrupted_fuzz(steps, seed, *, on_progress, **kw):
    """run_fuzz that finds one violation, reports progress, then gets Ctrl-C."""
    rep = FuzzReport(seed=seed)
    rep.steps, rep.sequences, rep.failing_sequences = 300, 1, 1
    rep.violations.append(_fake_violation())
    on_progress(300, rep)
    raise KeyboardInterrupt


def test_interrupted_fuzz_prints_and_saves_what_it_found(monkeypatch, tmp_path):
    monkeypatch.setattr(fuzz_mod, "run_fuzz", _interrupted_fuzz)
    out = tmp_path / "found.py"
    r = run("fuzz", "--steps", "1000", "--out", str(out))
    assert r.exit_code == 130, r.output
    assert out.read_text() == "print('replay of the planted violation')\n"
    assert "violations   1" in r.output and f"replay: python {out}" in r.output
    assert "interrupted  after 300 of 1000 steps; 1 replay script(s) written" in r.output
    assert r.output.strip().splitlines()[-1] == "hmmsim: interrupted"

    r = run("fuzz", "--steps", "1000", "--out", str(tmp_path / "j.py"), "--json")
    assert r.exit_code == 130
    data = json.loads(r.output[: r.output.rindex("}") + 1])
    assert data["interrupted"] is True and data["steps"] == 300
    assert data["replay_scripts"] == [str(tmp_path / "j.py")]


def test_ctrl_c_while_shrinking_keeps_the_failing_sequence(monkeypatch, tmp_path):
    """A real find (a known-bug mutant) interrupted during shrinking: the
    sequence as it ran is reported and scripted, and the script fails."""
    import subprocess
    import sys

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fuzz_runner, "_make_violation", interrupted)
    out = tmp_path / "found.py"
    r = run(
        "fuzz", "--bug", "exclusive_drops_mapcount", "--steps", "200",
        "--sequence-steps", "100", "--out", str(out),
    )  # fmt: skip
    assert r.exit_code == 130, r.output
    assert "violations   1" in r.output and "interrupted  after" in r.output
    script = out.read_text()
    assert "interrupted before shrinking" in script
    replay = subprocess.run([sys.executable, str(out)], capture_output=True, text=True)
    assert replay.returncode != 0 and "mapcount" in replay.stdout + replay.stderr


def _interrupting_runner(after: int):
    """make_runner whose every third schedule fails and whose schedule
    `after` + 1 gets Ctrl-C."""
    calls = []

    def make(name, cfg=None, max_steps=20000):
        def run_one(policy):
            calls.append(policy)
            if len(calls) > after:
                raise KeyboardInterrupt
            n = len(calls)
            res = RunResult(choices=[n], trace=[])
            if n % 3 == 0:
                res.error, res.error_kind = f"Deadlock: planted {n}", "Deadlock"
            # one more schedule to try after each: an option at every decision
            res.decisions = [(["A", "B"], 0, 1)] * n
            return res

        return run_one

    return make


def test_interrupted_explore_prints_and_saves_what_it_found(monkeypatch, tmp_path):
    monkeypatch.setattr(explore_cli, "make_runner", _interrupting_runner(7))
    out = tmp_path / "explore.json"
    r = run("explore", "two_devices_migrate_same_range", "-p", "3", "--out", str(out))
    assert r.exit_code == 130, r.output
    assert "two_devices_migrate_same_range: 7 schedules (interrupted), 2 violation(s)" in r.output
    assert "Deadlock: planted 3" in r.output
    saved = json.loads(out.read_text())
    assert saved["interrupted"] is True
    (rep,) = saved["reports"]
    assert rep["schedules"] == 7 and rep["complete"] is False
    assert [v["error"] for v in rep["violations"]] == ["Deadlock: planted 3", "Deadlock: planted 6"]
    assert f"saved to {out}" in r.output


def test_interrupted_explore_saves_by_default(monkeypatch, tmp_path):
    monkeypatch.setattr(explore_cli, "make_runner", _interrupting_runner(2))
    monkeypatch.chdir(tmp_path)
    r = run("explore", "two_devices_migrate_same_range", "--json")
    assert r.exit_code == 130, r.output
    saved = json.loads((tmp_path / explore_cli.INTERRUPTED_OUT).read_text())
    assert saved["reports"][0]["schedules"] == 2


def _interrupting_fixtures():
    fx = h.FIXTURE("intr")
    h.FIXTURE_VARIANT_ADD(fx, "only")

    @h.TEST_F(fx)
    def first(_metadata, self, variant):
        h.ASSERT_EQ(1, 1)

    @h.TEST_F(fx)
    def second(_metadata, self, variant):
        raise KeyboardInterrupt

    @h.TEST_F(fx)
    def third(_metadata, self, variant):
        h.ASSERT_EQ(1, 1)

    return (fx,)


def test_interrupted_selftest_prints_the_totals_so_far(monkeypatch):
    monkeypatch.setattr(hmm_tests, "FIXTURES", _interrupting_fixtures())
    r = run("selftest")
    assert r.exit_code == 130, r.output
    lines = r.output.splitlines()
    assert "ok 1 intr.only.first" in lines
    assert "# Interrupted after 1 of 3 tests." in lines
    assert "# Planned tests != run tests (3 != 1)" in lines
    assert lines[-1] == "hmmsim: interrupted"
    r = run("selftest", "--json")
    assert r.exit_code == 130
    summary = json.loads(r.output.splitlines()[-2])
    assert summary["interrupted"] is True and summary["run"] == 1 and summary["cases"] == 3


# --- explore's progress ------------------------------------------------------------------------
def test_explore_progress_within_a_scenario(monkeypatch):
    name = "two_devices_migrate_same_range"
    r = CliRunner().invoke(main, ["explore", name, "-p", "0", "--progress"])
    assert r.exit_code == 0, r.output
    assert f"explore {name}: 1 schedules, 0 violation(s)," in r.stderr
    assert r.stdout.startswith(f"{name}: ")
    r = CliRunner().invoke(main, ["explore", name, "-p", "0"])
    assert r.exit_code == 0 and r.stderr == ""  # not a terminal, no --progress: quiet


# --- --feature a,b,c and --conflict-resolution everywhere ---------------------------------------
KERNEL_COMMANDS = ("info", "demo", "selftest", "fuzz", "explore", "bench", "run")


@pytest.mark.parametrize("sub", KERNEL_COMMANDS)
def test_every_kernel_command_takes_both_options(sub):
    r = run(sub, "--help")
    assert r.exit_code == 0
    assert "--conflict-resolution" in r.output and "--feature" in r.output, r.output
    assert "a,b,c" in r.output, r.output


def test_comma_features_and_no_d():
    r = run("info", "--feature", "a,b,c", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["features"] == {
        "a": True,
        "b": True,
        "c": True,
        "d": True,
        "e": False,
    }
    r = run("info", "--feature", "a", "--feature", "b,c,no-d", "--json")
    assert json.loads(r.output)["features"] == {
        "a": True,
        "b": True,
        "c": True,
        "d": False,
        "e": False,
    }
    line = one_line_error(run("info", "--feature", "a,q"), 2)
    assert "'q' is not a seed series" in line


def test_c_and_e_need_a_resolution_everywhere():
    for sub in ("info", "selftest", "bench", "explore two_devices_migrate_same_range"):
        line = one_line_error(run(*sub.split(), "--feature", "a,b,c,e"), 2)
        assert "--conflict-resolution" in line, line
    r = run("info", "--feature", "a,b,c,e", "--conflict-resolution", "e-first", "--json")
    data = json.loads(r.output)
    assert data["conflict_resolution"] == "e-first" and all(data["features"].values())


def test_selftest_and_fuzz_run_c_plus_e():
    """Issue 14 item 6: every buildable combination, c+e included."""
    for cr in ("c-first", "e-first"):
        r = run(
            "selftest", "-t", "open_close", "-t", "anon_write",
            "--feature", "a,b,c,e", "--conflict-resolution", cr, "--json",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        *cases, summary = map(json.loads, r.output.splitlines())
        assert len(cases) == 4 and all(c["result"] == "pass" for c in cases)
        assert summary["config"]["features"] == "abcde"
        assert summary["config"]["conflict_resolution"] == cr
        r = run(
            "fuzz", "--steps", "60", "--seed", "5", "--json",
            "--feature", "a,b,c,e", "--conflict-resolution", cr,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        data = json.loads(r.output)
        assert data["features"] == f"abcde ({cr})"
        assert all(c.startswith(f"features=abcde/{cr} ") for c in data["configs"]), data


def test_every_buildable_combination_is_reachable():
    """Issue 14 item 6: each (features, resolution) that fuzz samples, (d) off
    included, runs through `selftest` and `fuzz` as asked."""
    from hmmsim.testing.fuzz import feature_configs

    configs = feature_configs()
    assert len(configs) >= 20 and any(cr for _, cr in configs)
    for fs, cr in configs:
        letters = sorted(fs) + ([] if "d" in fs else ["no-d"])
        args = ["--feature", ",".join(letters)]
        args += ["--conflict-resolution", cr] if cr else []
        r = run("selftest", "-r", "hmm.hmm_device_private.open_close", "--json", *args)
        assert r.exit_code == 0, (fs, cr, r.output)
        summary = json.loads(r.output.splitlines()[-1])
        assert summary["config"]["features"] == "".join(sorted(fs)), (fs, summary)
        assert summary["config"]["conflict_resolution"] == cr
        r = run("fuzz", "--steps", "5", "--json", *args)
        assert r.exit_code == 0, (fs, cr, r.output)
        label = "".join(sorted(fs)) or "none"
        assert json.loads(r.output)["features"] == label + (f" ({cr})" if cr else "")


def test_run_takes_comma_features(tmp_path):
    scn = sorted(SCN.glob("*.scn"))[0]
    r = run("run", str(scn), "--feature", "a,b,c,e", "--conflict-resolution", "c-first")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output


# --- bench and selftest --json -----------------------------------------------------------------
def test_bench_output_does_not_truncate_when_piped():
    r = run("bench", "--size", "512K", "--repeat", "1", "--feature", "a")
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.output.splitlines() if ln.startswith("│")]
    assert len(rows) >= 8 and "…" not in r.output, r.output
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert len(cells) == 8 and cells[1] == "512 KiB", row
        assert all(c.replace(",", "").replace(".", "").isdigit() for c in cells[2:]), row
    assert "series ad" in r.output


def test_bench_json_carries_the_configuration():
    r = run("bench", "--size", "512K", "--repeat", "1", "--json", "--feature", "a,b,c,e",
            "--conflict-resolution", "e-first")  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)["config"]
    assert cfg["features"] == "abcde" and cfg["conflict_resolution"] == "e-first"
    assert cfg["ram_bytes"] == 256 << 20


def _benchmark_fixtures():
    fx = h.FIXTURE("bench")
    h.FIXTURE_VARIANT_ADD(fx, "only")

    @h.TEST_F(fx)
    def table(_metadata, self, variant):
        thp, regular = hmm_tests.benchmark_results(), hmm_tests.benchmark_results()
        thp.sys_to_dev_time, regular.sys_to_dev_time = 1.5, 3.0
        thp.dev_to_sys_time, regular.dev_to_sys_time = 2.0, 2.5
        thp.throughput_s2d, regular.throughput_s2d = 0.33, 0.16
        thp.throughput_d2s, regular.throughput_d2s = 0.25, 0.2
        hmm_tests.print_benchmark_results("Single THP Size", 2 << 20, thp, regular)

    return (fx,)


def test_selftest_json_carries_the_benchmark_table(monkeypatch):
    monkeypatch.setattr(hmm_tests, "FIXTURES", _benchmark_fixtures())
    r = run("selftest", "--json")
    assert r.exit_code == 0, r.output
    case, summary = map(json.loads, r.output.splitlines())
    (table,) = case["benchmark"]
    assert table["test"] == "Single THP Size" and table["size_bytes"] == 2 << 20
    rows = {row["what"]: row for row in table["rows"]}
    assert rows["Sys->Dev Migration"] == {
        "what": "Sys->Dev Migration",
        "unit": "ms",
        "thp": 1.5,
        "without_thp": 3.0,
        "improvement_pct": 50.0,
    }
    assert rows["D->S Throughput"]["unit"] == "GB/s"
    assert rows["D->S Throughput"]["improvement_pct"] == 25.0
    assert summary["config"]["features"] == "d"
