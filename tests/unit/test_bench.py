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
        if r.op.startswith(("round trip", "migrate to")):
            # against the copies interleaved with the repetitions; the
            # once-measured bound gives vs_copy_once
            copies = 2 if r.op.startswith("round trip") else 1
            assert r.copy_s > 0
            assert abs(r.vs_copy_once - r.median_s / (copies * bound[r.size])) < 1e-9
        else:
            assert r.copy_s is None and r.vs_copy_once is None
            assert abs(r.vs_copy - r.median_s / bound[r.size]) < 1e-9
    assert b.memory()["struct_page_bytes"] <= 64


def test_bench_cli_json_and_bad_size():
    r = CliRunner().invoke(bench_command, ["--size", "512K", "--repeat", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["memory"]["struct_page_bytes"] <= 64 and data["rows"]
    r = CliRunner().invoke(bench_command, ["--size", "3M"])
    assert r.exit_code != 0


def test_migration_ratio_is_the_median_of_per_repetition_ratios():
    """Each repetition is divided by the mean of the copies timed right
    before and after it, and vs_copy is the median of those ratios: a copy
    bound that doubles halfway through moves the ratio with it."""
    b = Bench(512 << 10, 3)
    b.copy_bound[512 << 10] = 1.0
    times, bounds = [4.0, 10.0, 9.0], [1.0, 2.0, 3.0]
    r = b.add("round trip (4K)", 512 << 10, times, copies=2, bounds=bounds)
    assert r.vs_copy == 2.0  # median of 2.0, 2.5, 1.5
    assert r.copy_s == 2.0 and r.vs_copy_once == 4.5
    b.migration(512 << 10, False)
    rt = b.rows[-1]
    assert rt.op == "round trip (4K)" and rt.copy_s > 0 and rt.vs_copy > 0
