import json

from click.testing import CliRunner

from hmmsim.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and "hmmsim" in r.output
    for sub in ("info", "demo", "selftest", "explore", "fuzz", "bench"):
        r = run(sub, "--help")
        assert r.exit_code == 0 and "Usage: main " + sub in r.output, r.output


def test_info_reports_pin_features_and_memory():
    r = run("info", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["kernel"]["commit"].startswith("0eaed89c18ae")
    assert data["features"] == {"a": False, "b": False, "c": False, "d": True, "e": False}
    assert data["memory"]["struct_page_bytes"] <= 64
    assert data["memory"]["ram_pages"] == (256 << 20) // 4096
    r = run("info", "--feature", "a", "--feature", "b", "--feature", "c", "--ram", "1G")
    assert r.exit_code == 0 and "series c   [on ]" in r.output and "1024 MiB" in r.output


def test_bad_input_is_one_line_no_traceback():
    for args in (
        ("info", "--feature", "c"),
        ("info", "--ram", "lots"),
        ("info", "--feature", "q"),
        ("explore", "no_such_scenario"),
        ("bench", "--size", "zz"),
        ("fuzz", "--steps", "-3"),
        ("selftest", "-t", "no_such_test"),
    ):
        r = run(*args)
        assert r.exit_code != 0
        assert "Traceback" not in r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hmmsim: error:"), r.output


def test_demo_prints_real_entries():
    r = run("demo")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "(zero page)" in out and "SPECIAL" in out
    assert "[P U A NX SPECIAL]" in out or "SPECIAL" in out
    assert "pmd pfn=" in out and "PSE" in out
    assert "The invariant checker agrees" in out


def test_explore_through_the_main_command():
    """`hmmsim explore` is registered: one scenario, exhaustively, finds no bug."""
    r = run("explore", "two_devices_migrate_same_range", "-p", "1", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output.strip().splitlines()[-1])
    assert data["scenario"] == "two_devices_migrate_same_range"
    assert data["complete"] and data["schedules"] > 1 and data["violations"] == []
