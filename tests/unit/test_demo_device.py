"""`hmmsim demo device`: the narrated device-migration tour, under each seed series.

The tour is checked by what it prints (the real PTE words, decoded) and by its
trace (where each page lives after each step), for the pinned kernel, each
seed letter, the comma form on the command line, and the 6.12 profile.
"""

import pytest
from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.demo import DemoTrace, run_device_demo
from hmmsim.explain import read_pte
from hmmsim.include.swapops import SwapLayout
from hmmsim.kconfig import KConfig

CONFIGS = {
    "pinned": dict(features=frozenset({"d"})),
    "a": dict(features=frozenset({"a", "d"})),
    "b": dict(features=frozenset({"b", "d"})),
    "abc": dict(features=frozenset({"a", "b", "c", "d"})),
    "e": dict(features=frozenset({"d", "e"})),
    "abce": dict(features=frozenset({"a", "b", "c", "d", "e"}), conflict_resolution="c-first"),
    "6.12": dict(features=frozenset(), kernel="6.12"),
    "no-d": dict(features=frozenset()),
}


def _tour(name: str) -> tuple[KConfig, list[str], DemoTrace]:
    cfg = KConfig(ram_bytes=64 << 20, **CONFIGS[name])
    lines: list[str] = []
    t = run_device_demo(cfg, lines.append)
    return cfg, "\n".join(lines).splitlines(), t


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tour(request):
    return request.param, *_tour(request.param)


def _col(t: DemoTrace, step: str) -> dict[str, tuple[str, str]]:
    return dict(zip(t.rows, t.cells[t.steps.index(step)], strict=True))


def test_device_private_entries_appear_and_decode(tour):
    name, cfg, out, t = tour
    swp = SwapLayout(cfg)
    on_dev = _col(t, "2 on device")
    assert all(on_dev[f"page {i}"] == ("device rw", "pte") for i in range(4))
    # the word the tour printed for page 0 after MIGRATE_TO_DEV, decoded by explain
    after = [x for x in out if x.lstrip().startswith("page 0 ") and "DEVICE_PRIVATE_WRITE" in x]
    assert after, "no device-private entry printed for page 0"
    word = int(after[0].split(": ")[1].split()[0], 16)
    assert swp.softleaf_is_device_private_write(swp.softleaf_from_pte(word))
    r = read_pte(cfg, word)
    assert r.plausible and "SOFTLEAF_DEVICE_PRIVATE_WRITE" in r.text
    label = "offset=" if cfg.has("c") else "pfn="
    assert f"SOFTLEAF_DEVICE_PRIVATE_WRITE {label}" in after[0]


def test_fault_back_count_and_in_flight_entries(tour):
    name, cfg, out, t = tour
    # one CPU load and one child write each fault one page back
    assert t.faults_back == 2
    assert any("2 page(s) faulted back through migrate_to_ram" in x for x in out)
    assert any("faulted back: 1 page" in x for x in out)
    inflight = [x for x in out if "page 1 in flight" in x]
    assert inflight
    if cfg.has("b"):
        assert "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE" in inflight[0]
    else:
        assert "SOFTLEAF_MIGRATION_WRITE" in inflight[0]
    col = _col(t, "3 in flight")
    assert col["page 1"] == ("migrating", "pte") and col["page 0"] == ("device rw", "pte")
    assert _col(t, "3 CPU load")["page 1"] == ("RAM rw", "pte")


def test_fork_makes_device_private_entries_read_only_in_both(tour):
    name, cfg, out, t = tour
    col = _col(t, "5 fork")
    for who in ("page", "child page"):
        for i in (0, 2, 3):
            assert col[f"{who} {i}"] == ("device ro", "pte")
    assert any("SOFTLEAF_DEVICE_PRIVATE_READ" in x and "child page 0" in x for x in out)
    col = _col(t, "5 child writes")
    assert col["child page 2"] == ("RAM rw", "pte") and col["page 2"] == ("RAM ro", "pte")
    assert any("child reads b'child! data'" in x for x in out)


def test_thp_whole_and_split_and_eviction(tour):
    name, cfg, out, t = tour
    whole = _col(t, "6 THP A whole")["THP A"]
    if cfg.has("d"):
        assert whole == ("device rw", "pmd")
        assert any("MIGRATE_PFN_COMPOUND" in x or "COMPOUND" in x for x in out)
    else:  # no THP migration of device pages: split on the way
        assert whole == ("device rw", "pte")
    split = _col(t, "6 THP B split")["THP B"]
    if cfg.has("d") or cfg.kernel == "6.12":  # 6.12 has no FLAGS ioctl: B goes like A
        assert split == ("device rw", "pte")
    else:  # FAIL_ALLOC hits the first small page, which stays; read-back -ENOENT
        assert split == ("RAM rw", "pte")
        assert any("ret=-2 cpages=0" in x for x in out)
    last = _col(t, "7 release")
    assert all(last[f"page {i}"][0].startswith("RAM") for i in range(4))
    assert last["THP A"][0] == "RAM rw" and last["THP B"][0] == "RAM rw"
    assert any("every byte the CPU wrote reads back: yes" in x for x in out)


def test_snapshot_words_follow_the_series(tour):
    name, cfg, out, t = tour
    from hmmsim.include.hmm import HmmPfnLayout

    L = HmmPfnLayout(cfg)
    w = t.words["hmm dmirror0 page 0"]
    assert w & L.HMM_PFN_VALID and w & L.HMM_PFN_WRITE
    assert bool(w & L.HMM_PFN_DEVICE_PRIVATE) == cfg.has("c")
    assert t.words["hmm dmirror1 page 0"] == 0  # another owner's device page: not reported
    if cfg.has("d"):
        assert L.hmm_pfn_to_map_order(t.words["hmm THP A ram"]) == 9
    if cfg.has("e"):
        assert t.words["hmm migrate page 0"] & L.HMM_PFN_MIGRATE
        assert any("HMM_PFN_REQ_MIGRATE" in x for x in out)


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_tours_and_comma_features():
    r = run("demo")
    assert r.exit_code == 0, r.output
    dev = r.output.index("Device migration with the dmirror test driver")
    cpu = r.output.index("The CPU side")
    assert dev < cpu and "(zero page)" in r.output[cpu:]
    r = run("demo", "device", "--feature", "a,b,c")
    assert r.exit_code == 0, r.output
    assert "series=abcd" in r.output and "offset=" in r.output
    r = run("demo", "cpu")
    assert r.exit_code == 0 and "Device migration" not in r.output


def test_cli_diff_shows_exactly_the_changed_words():
    r = run("demo", "device", "--feature", "b", "--diff")
    assert r.exit_code == 0, r.output
    minus = [x for x in r.output.splitlines() if x.startswith("-") and not x.startswith("---")]
    plus = [x for x in r.output.splitlines() if x.startswith("+") and not x.startswith("+++")]
    assert any("page 1 in flight" in x and "SOFTLEAF_MIGRATION_WRITE" in x for x in minus)
    assert any(
        "page 1 in flight" in x and "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE" in x for x in plus
    )
    # series (b) moves the device-private type numbers, not the PFN
    assert any("0xe7fff80004000002" in x for x in minus)
    assert any("0xcffff80004000002" in x for x in plus)
    r = run("demo", "device", "--diff")
    assert r.exit_code == 0 and "no line of the device tour differs" in r.output


def test_cli_bad_input_is_one_line():
    for args in (
        ("demo", "--feature", "q"),
        ("demo", "device", "--feature", "c"),
        ("demo", "device", "--feature", "a,b,c,e"),
        ("demo", "cpu", "--diff"),
        ("demo", "nowhere"),
    ):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hmmsim: error:"), r.output


def test_cli_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    r = run("demo", "device", "--feature", "b", "--plot", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_picture_is_a_png():
    from pathlib import Path

    png = Path(__file__).resolve().parents[2] / "docs" / "img" / "demo-device.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
