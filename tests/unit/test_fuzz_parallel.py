"""`hmmsim fuzz --workers N [--ray]`: seeds sharded, findings shrunk in the
workers and merged into one report (hmmsim.testing.fuzz_parallel)."""

from __future__ import annotations

import json
import sys
import time

import pytest
from click.testing import CliRunner

from hmmsim.testing.fuzz_parallel import plan_shards, run_fuzz_parallel, shard_seed

BUG = "exclusive_drops_mapcount"


def _cli(args):
    from hmmsim.cli import main

    return CliRunner().invoke(main, args)


def _summary(rep):
    d = rep.to_json()
    d.pop("seconds")
    d.pop("steps_per_second")
    return d


def test_shards_do_not_depend_on_workers():
    s = plan_shards(1000, 7, 60, shard_sequences=4)
    assert [x.steps for x in s] == [240, 240, 240, 240, 40]
    assert [x.index for x in s] == [0, 1, 2, 3, 4]
    assert s[1].seed == shard_seed(7, 1) != shard_seed(8, 1)
    assert len({x.seed for x in s}) == len(s)


def test_clean_model_two_workers_merge_like_one():
    kw = dict(sequence_steps=40, shard_sequences=1, configs=[(frozenset("abcd"), "c-first")])
    t0 = time.perf_counter()
    two = run_fuzz_parallel(160, 5, workers=2, **kw)
    print(f"4 shards of 40 steps on 2 workers: {time.perf_counter() - t0:.2f} s")
    one = run_fuzz_parallel(160, 5, workers=1, **kw)
    assert two.violations == [] and two.failing_sequences == 0 and two.bytes_lost == 0
    assert (two.steps, two.sequences) == (160, 4)
    assert sum(two.ops.values()) >= 160 and two.checks >= 16
    assert _summary(one) == _summary(two)


def test_known_bug_found_and_reported_once(tmp_path):
    """Two shards both find the mutant (--keep-going); the merged report has
    one violation, shrunk in its worker, counting every failing sequence."""
    out = tmp_path / "finding.py"
    r = _cli(
        ["fuzz", "--bug", BUG, "--steps", "300", "--seed", "1", "--sequence-steps", "60"]
        + ["--workers", "2", "--keep-going", "--shrink-seconds", "20", "--out", str(out)]
    )
    assert r.exit_code == 1, r.output
    # today's report format, once
    assert r.output.strip().startswith("hmmsim fuzz: seed 1: 300 steps in ")
    assert r.output.count("hmmsim fuzz: seed") == 1
    assert r.output.count("_mapcount says # PTE mappings") == 1, r.output
    assert "more sequences)" in r.output and "violations   2" in r.output
    assert "sharded run" in out.read_text()


def test_merge_counts_one_signature_found_in_two_shards(monkeypatch):
    """Shards are merged in shard order: one violation per signature, the
    first shard's, with the counts summed and sequences renumbered."""
    from types import SimpleNamespace

    from hmmsim.testing import fuzz_parallel as fp
    from hmmsim.testing.fuzz import FuzzReport

    def fake_shard(shard, kw):
        rep = FuzzReport(seed=shard.seed, steps=shard.steps, sequences=3, failing_sequences=2)
        rep.ops.update({"Mmap": 1})
        rep.violations = [
            SimpleNamespace(
                signature="sig-A",
                count=2,
                sequence=1,
                seed=shard.index,
                script=f"(sequence 1, sequence seed {shard.index})",
            )
        ]
        if shard.index == 2:
            rep.violations.append(
                SimpleNamespace(signature="sig-B", count=1, sequence=2, seed=9, script="")
            )
        return rep

    monkeypatch.setattr(fp, "run_shard", fake_shard)
    rep = run_fuzz_parallel(300, 0, workers=1, sequence_steps=25, max_violations=1 << 62)
    assert (rep.steps, rep.sequences, rep.failing_sequences) == (300, 9, 6)
    assert [v.signature for v in rep.violations] == ["sig-A", "sig-B"]
    a, b = rep.violations
    assert a.count == 6 and a.seed == 0 and a.sequence == 1 and b.sequence == 6 + 2
    assert "(sequence 1 of a sharded run: shard 0" in a.script
    assert rep.ops["Mmap"] == 3
    # without --keep-going the first failing shard ends the run
    one = run_fuzz_parallel(300, 0, workers=1, sequence_steps=25)
    assert (one.steps, one.failing_sequences, len(one.violations)) == (100, 2, 1)


def test_stops_at_the_first_failing_shard():
    """Without --keep-going: one violation, from the first failing shard in
    shard order (the same whatever the workers), reproduced and shrunk."""
    kw = dict(sequence_steps=60, shrink_seconds=20, bugs=frozenset({BUG}))
    rep = run_fuzz_parallel(300, 1, workers=2, **kw)
    assert rep.failing_sequences == 1 and len(rep.violations) == 1
    v = rep.violations[0]
    assert "_mapcount" in v.signature and v.count == 1
    assert v.reproduced and len(v.ops) < v.original_steps
    assert rep.steps < 300  # the shards after the failing one are not counted
    assert f"(sequence {v.sequence} of a sharded run" in v.script
    d = rep.to_json()
    assert d["failing_sequences"] == 1 and d["violations"][0]["shrunk_steps"] == len(v.ops)


def test_cli_clean_model_json():
    r = _cli(
        ["fuzz", "--steps", "80", "--seed", "2", "--sequence-steps", "40", "--workers", "2"]
        + ["--json", "--feature", "a,b,c,d"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["violations"] == [] and d["steps"] == 80 and d["sequences"] == 2


def test_cli_ray_without_ray_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = _cli(["fuzz", "--steps", "10", "--ray"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install '.[ray]'" in lines[0], r.stderr


@pytest.mark.slow
def test_ray_local_cluster_fuzz():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = run_fuzz_parallel(
            120, 3, ray="local", sequence_steps=40, shard_sequences=1, configs=[(frozenset(), None)]
        )
    finally:
        ray.shutdown()
    want = run_fuzz_parallel(
        120, 3, workers=1, sequence_steps=40, shard_sequences=1, configs=[(frozenset(), None)]
    )
    assert _summary(got) == _summary(want) and got.steps == 120
