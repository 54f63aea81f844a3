"""`hmmsim sweep`: a TOML grid run on a process pool or Ray (hmmsim.sim.sweep)."""

from __future__ import annotations

import csv
import sys
import time

import pytest
from click.testing import CliRunner

from hmmsim.sim.engine import Metrics
from hmmsim.sim.sweep import (
    SweepError,
    grid_from_dict,
    load_grid,
    run_grid,
    summary_plot,
    write_rows,
)

GRID = """
workloads = ["stream:size=2M,passes=2", "random:size=2M,n=300"]
policies = ["naive", "nvidia-uvm"]
seeds = [3]

[params]
gpu_fault_latency_us = 25
"""


def _cli(args):
    from hmmsim.cli import main

    return CliRunner().invoke(main, args)


@pytest.fixture
def grid_file(tmp_path):
    p = tmp_path / "grid.toml"
    p.write_text(GRID)
    return p


def test_points_are_the_product_in_a_fixed_order():
    g = grid_from_dict(
        {
            "workloads": ["stream:size=2M"],
            "policies": ["naive", "amd-svm"],
            "seeds": [0, 1],
            "grid": {
                "interconnect": ["pcie4", "pcie5"],
                "oversub": [1.0, 2.0],
                "device_mem": ["2M"],
            },
        }
    )
    pts = g.points()
    assert len(pts) == 1 * 2 * 2 * 2 * 1 * 2
    assert [p["point"] for p in pts] == list(range(16))
    p = pts[3]  # naive, pcie4, oversub=2.0, seed 1
    assert (p["policy"], p["seed"], p["params"]["interconnect"]) == ("naive", 1, "pcie4")
    assert p["workload_spec"] == "stream:size=2M,oversub=2.0" and p["device_mem"] == "2M"
    cols = g.columns()
    assert cols[:7] == [
        "point",
        "workload_spec",
        "policy",
        "seed",
        "interconnect",
        "oversub",
        "device_mem",
    ]
    assert cols.count("interconnect") == 1 and cols[-1] == "error"


def test_two_workers_give_the_rows_of_one(grid_file, tmp_path):
    g = load_grid(str(grid_file))
    assert len(g.points()) == 4
    t0 = time.perf_counter()
    one = run_grid(g, workers=1)
    t1 = time.perf_counter()
    two = run_grid(g, workers=2)
    print(f"1 worker {t1 - t0:.2f} s, 2 workers {time.perf_counter() - t1:.2f} s")
    assert one == two
    assert [r["point"] for r in two] == [0, 1, 2, 3]
    assert all(r["error"] == "" and r["data_errors"] == 0 for r in two)
    # the grid's [params] reach every point; prefetch cuts stream faults
    assert two[0]["gpu_faults_unique"] > two[1]["gpu_faults_unique"]
    # the CLI writes the same rows to CSV
    out = tmp_path / "r.csv"
    r = _cli(["sweep", str(grid_file), "--workers", "2", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "4 points (0 failed)" in r.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["point"]) for x in rows] == [0, 1, 2, 3]
    assert [int(x["gpu_faults"]) for x in rows] == [x["gpu_faults"] for x in one]


def test_csv_columns(grid_file, tmp_path):
    g = load_grid(str(grid_file))
    rows = run_grid(g, workers=1)
    out = tmp_path / "r.csv"
    write_rows(rows, g.columns(), str(out))
    header = out.read_text().splitlines()[0].split(",")
    metrics = [f for f in Metrics.__dataclass_fields__ if f not in ("policy",)]
    assert header[:4] == ["point", "workload_spec", "policy", "seed"]
    assert header[4:-1] == metrics and header[-1] == "error"
    assert len(out.read_text().splitlines()) == 1 + len(rows)


def test_summary_plot(grid_file, tmp_path):
    pytest.importorskip("matplotlib")
    g = load_grid(str(grid_file))
    rows = run_grid(g, workers=1)
    png = summary_plot(g, rows, str(tmp_path / "s.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_failing_point_is_a_row_with_its_error():
    g = grid_from_dict(
        {
            "workloads": ["stream:size=4M"],
            "policies": ["naive"],
            "grid": {"device_mem": ["2M", "4M"]},
        }
    )
    rows = run_grid(g)
    assert all(r["error"] == "" for r in rows)  # 2M oversubscribes and evicts; both run
    assert rows[0]["evictions"] > 0 and rows[1]["evictions"] == 0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("workloads = [", "not valid TOML"),
        ('workloads = ["stream"]\npolicies = ["lru-magic"]', "unknown policy 'lru-magic'"),
        ('workloads = ["nosuch"]\npolicies = ["naive"]', "unknown workload 'nosuch'"),
        ('policies = ["naive"]', "needs workloads"),
        ('workloads = ["stream"]\npolicies = ["naive"]\nwhat = 1', "unknown key(s) what"),
        (
            'workloads = ["stream"]\npolicies = ["naive"]\n[grid]\nbogus = [1]',
            "no parameter 'bogus'",
        ),
        ('workloads = ["stream"]\npolicies = ["naive"]\n[params]\nbogus = 1', "unknown parameter"),
        ('workloads = ["stream"]\npolicies = ["naive"]\n[grid]\ninterconnect = ["isa"]', "isa"),
        ('workloads = ["stream"]\npolicies = ["naive"]\n[grid]\ndevice_mem = ["1M"]', "2 MiB"),
        ('workloads = ["stream"]\npolicies = ["naive"]\nplot_metric = "x"', "not a metric"),
    ],
)
def test_grid_errors_are_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SweepError, match=None) as e:
        load_grid(str(p))
    assert needle in str(e.value) and "\n" not in str(e.value)
    r = _cli(["sweep", str(p), "--out", str(tmp_path / "r.csv")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmsim: error:") and needle in lines[0]


def test_cli_one_line_errors(tmp_path, grid_file, monkeypatch):
    r = _cli(["sweep", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    r = _cli(["sweep"])
    assert r.exit_code == 2 and "give a GRID" in r.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = _cli(["sweep", str(grid_file), "--ray"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install '.[ray]'" in lines[0], r.stderr
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    r = _cli(["sweep", str(grid_file), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 2 and "needs pyarrow" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_parquet(grid_file, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    g = load_grid(str(grid_file))
    rows = run_grid(g, workers=1)
    write_rows(rows, g.columns(), str(tmp_path / "r.parquet"))
    t = pq.read_table(str(tmp_path / "r.parquet"))
    assert t.column_names == g.columns() and t.num_rows == 4


def test_example_grid_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    g = load_grid(str(root / "docs/examples/sweep-grid.toml"))
    assert len(g.points()) == 24


@pytest.mark.slow
def test_ray_local_cluster_two_points(tmp_path):
    """A local Ray cluster (ray.init(num_cpus=2)) runs a 2-point sweep; the
    rows equal the process pool's."""
    ray = pytest.importorskip("ray")
    g = grid_from_dict({"workloads": ["stream:size=2M"], "policies": ["naive", "amd-svm"]})
    want = run_grid(g, workers=1)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = run_grid(g, ray="local")
    finally:
        ray.shutdown()
    print(f"ray: {time.perf_counter() - t0:.1f} s (init, 2 points, shutdown)")
    assert got == want
    # and through the CLI, which starts and stops its own local cluster
    out = tmp_path / "r.csv"
    r = _cli(
        ["sweep", "--ray", "--workers", "2", "--out", str(out), "-q", "--", _write(tmp_path, g)]
    )
    assert r.exit_code == 0, r.output
    assert "on Ray (local)" in r.output and len(out.read_text().splitlines()) == 3


def _write(tmp_path, g) -> str:
    p = tmp_path / "g.toml"
    pols = ", ".join(f'"{x}"' for x in g.policies)
    wls = ", ".join(f'"{x}"' for x in g.workloads)
    p.write_text(f"workloads = [{wls}]\npolicies = [{pols}]\n")
    return str(p)
