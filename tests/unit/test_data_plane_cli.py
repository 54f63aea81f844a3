"""The token data plane on `hmmsim info` and `hmmsim sweep` (KConfig.data_plane,
hmmsim.data_plane): info shows the plane and the host bytes per page, and
counts the host memory for that plane; a sweep grid sets it for every point
or varies it as an axis. Bad values are one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

import hmmsim.cli_options as cli_options
from hmmsim import data_plane
from hmmsim.cli import main
from hmmsim.include.mm_types import STRUCT_PAGE_BYTES
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.sim import engine, sweep
from hmmsim.sim.sweep import SweepError, grid_from_dict, load_grid, run_grid, write_rows


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def _one_line_usage_error(r, needle: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmsim: error:"), r.stderr
    assert needle in lines[0] and "Traceback" not in r.output


def test_the_cli_choices_are_the_planes():
    assert cli_options.DATA_PLANES == sweep.DATA_PLANES == data_plane.DATA_PLANES


@pytest.mark.parametrize("plane, per_page", [("bytes", PAGE_SIZE), ("tokens", 8)])
def test_info_shows_the_plane_and_host_bytes_per_page(plane, per_page):
    r = _cli("info", "--json", "--ram", "64M", "--data-plane", plane)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["data_plane"] == plane
    assert d["host_bytes_per_page"] == per_page + STRUCT_PAGE_BYTES
    assert d["host_bytes"] == d["memory"]["ram_pages"] * (per_page + STRUCT_PAGE_BYTES)
    r = _cli("info", "--ram", "64M", "--data-plane", plane)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("data plane"))
    assert line.startswith(f"data plane {plane}: at most {per_page + STRUCT_PAGE_BYTES} host")
    assert f"({d['host_bytes'] >> 20} MiB for this RAM)" in line


def test_info_counts_the_host_memory_of_its_plane(monkeypatch):
    """1 GiB of token RAM needs about 14 MiB of host memory, of byte RAM
    about 1 GiB: with 100 MiB available, only the first boots."""
    monkeypatch.setattr(cli_options, "host_memory_available", lambda: 100 << 20)
    _one_line_usage_error(_cli("info", "--ram", "1G"), "--ram 1G needs about 1.0 GiB")
    r = _cli("info", "--json", "--ram", "1G", "--data-plane", "tokens")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["memory"]["ram_pages"] == (1 << 30) // PAGE_SIZE


def test_info_bad_plane_is_one_line():
    _one_line_usage_error(_cli("info", "--data-plane", "pages"), "'pages' is not one of")


def _planes_seen(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = engine.Simulation

    class Recording(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self.k.mem.data_plane)

    monkeypatch.setattr(engine, "Simulation", Recording)
    return seen


def test_sweep_data_plane_axis_runs_each_plane(monkeypatch, tmp_path):
    seen = _planes_seen(monkeypatch)
    g = grid_from_dict(
        {
            "workloads": ["stream:size=2M,passes=2"],
            "policies": ["naive"],
            "features": ["a"],
            "grid": {"data_plane": ["bytes", "tokens"]},
        }
    )
    rows = run_grid(g, workers=1)
    assert seen == ["bytes", "tokens"]
    assert [r["data_plane"] for r in rows] == ["bytes", "tokens"]
    assert all(r["error"] == "" for r in rows)
    same = [m for m in sweep.METRIC_FIELDS if m != "wall_s"]
    assert {m: rows[0][m] for m in same} == {m: rows[1][m] for m in same}
    out = tmp_path / "r.csv"
    write_rows(rows, g.columns(), str(out))
    with open(out, newline="") as f:
        assert [r["data_plane"] for r in csv.DictReader(f)] == ["bytes", "tokens"]


def test_sweep_top_level_data_plane_sets_every_point(monkeypatch, tmp_path):
    seen = _planes_seen(monkeypatch)
    p = tmp_path / "g.toml"
    p.write_text(
        'workloads = ["random:size=2M,n=200"]\npolicies = ["naive", "nvidia-uvm"]\n'
        'data_plane = "tokens"\n'
    )
    g = load_grid(str(p))
    assert g.columns()[:5] == ["point", "workload_spec", "policy", "seed", "data_plane"]
    rows = run_grid(g, workers=1)
    assert seen == ["tokens", "tokens"] and all(r["error"] == "" for r in rows)
    # without the key: bytes, and the CSV keeps its columns
    p.write_text('workloads = ["random:size=2M,n=200"]\npolicies = ["naive"]\n')
    g = load_grid(str(p))
    assert "data_plane" not in g.columns()
    run_grid(g, workers=1)
    assert seen[-1] == "bytes"


@pytest.mark.parametrize(
    "line", ['data_plane = "pages"', "data_plane = 1", '[grid]\ndata_plane = ["tokens", "bits"]']
)
def test_sweep_bad_plane_is_one_line(tmp_path, line):
    p = tmp_path / "bad.toml"
    p.write_text(f'workloads = ["stream:size=2M"]\npolicies = ["naive"]\n{line}\n')
    with pytest.raises(SweepError, match="data_plane must be one of bytes, tokens"):
        load_grid(str(p))
    r = _cli("sweep", str(p), "--out", str(tmp_path / "r.csv"))
    _one_line_usage_error(r, "data_plane must be one of bytes, tokens")
