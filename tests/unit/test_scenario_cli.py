"""`hmmsim run` and `hmmsim scenario gen`."""

from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.scenario.gen import generate

SCN = (
    "# two pages\n"
    "mmap 0x100000000 8192 read|write private|anon|fixed_noreplace\n"
    "store 0x100000000 1 7\n"
    "load 0x100000000 2\n"
)


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_run_prints_the_lines(tmp_path):
    f = tmp_path / "a.scn"
    f.write_text(SCN)
    r = invoke("run", str(f), "--kernel", "6.12", "--check-invariants")
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    assert out[:2] == ["2 mmap = 0x100000000", "3 store = ok"]
    assert out[2].startswith("4 load = ") and out[2].endswith(",z")


def test_run_golden_agrees_and_differs(tmp_path):
    f = tmp_path / "a.scn"
    f.write_text(SCN)
    good = tmp_path / "a.golden"
    good.write_text(invoke("run", str(f)).output)
    r = invoke("run", str(f), "--golden", str(good))
    assert r.exit_code == 0 and "2 mmap" in r.output
    bad = tmp_path / "b.golden"
    bad.write_text(good.read_text().replace("3 store = ok", "3 store = SIGSEGV MAPERR @0"))
    r = invoke("run", str(f), "--golden", str(bad))
    assert r.exit_code == 1
    assert "-3 store = SIGSEGV MAPERR @0" in r.output and "+3 store = ok" in r.output
    assert r.output.startswith("--- ")


def test_run_bad_scenario_is_one_line(tmp_path):
    f = tmp_path / "bad.scn"
    f.write_text("mmap 0 4096\n")
    r = invoke("run", str(f))
    assert r.exit_code != 0
    assert "line 1: mmap takes 4 to 6 arguments" in r.output
    assert "Traceback" not in r.output


def test_gen_writes_seeded_files(tmp_path):
    r = invoke("scenario", "gen", "--seed", "10", "--count", "3", "--out", str(tmp_path / "g"))
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "g").glob("*.scn"))
    assert [p.name for p in files] == ["0000.scn", "0001.scn", "0002.scn"]
    assert files[2].read_text() == generate(12)
    r = invoke("scenario", "gen", "--seed", "4")
    assert r.output == generate(4) + "\n"
