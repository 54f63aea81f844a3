"""`hmmsim bench` produces every row, consistent ratios, and valid JSON (tiny size)."""

import json

from click.testing import CliRunner

from hmmsim.bench import Bench, sizes_up_to
from hmmsim.bench_cli import bench_command


def test_sizes():
    assert sizes_up_to(512 << 10) == [512 << 10]
    assert sizes_up_to(64 << 20) == [512 << 10, 4 << 20, 32 << 20, 64 << 20]


def test_bench_rows_and_ratios():
    b = Bench(4 << 20, 1)
    for _, fn in b.tasks():
        fn()
    ops = {r.op for r in b.rows}
    for op in (
        "numpy copy (bound)",
        "round trip (THP)",
        "round trip (4K)",
        "hmm_range_fault snapshot",
        "device READ (hmm_range_fault)",
        "first-touch faults (4K, a store per page)",
        "first-touch faults (4K, one store)",
        "fork + exit (4K populated)",
    ):
        assert op in ops, op
    bound = {r.size: r.median_s for r in b.rows if r.op == "numpy copy (bound)"}
    for r in b.rows:
        assert r.median_s > 0 and r.min_s <= r.median_s <= r.max_s
        if r.op.startswith("round trip"):
            assert abs(r.vs_copy - r.median_s / (2 * bound[r.size])) < 1e-9
    assert b.memory()["struct_page_bytes"] <= 64


def test_bench_cli_json_and_bad_size():
    r = CliRunner().invoke(bench_command, ["--size", "512K", "--repeat", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["memory"]["struct_page_bytes"] <= 64 and data["rows"]
    r = CliRunner().invoke(bench_command, ["--size", "3M"])
    assert r.exit_code != 0
