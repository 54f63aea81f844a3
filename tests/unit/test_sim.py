"""hmmsim.sim: engine, policies, workloads, cost model, trace export, CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hmmsim.sim import GENERATORS, POLICIES, SimParams, Simulation, make_workload
from hmmsim.sim.clock import EventClock
from hmmsim.sim.export import chrome_trace, write_moves
from hmmsim.sim.params import ParamError, load_toml
from hmmsim.sim.workloads import WorkloadError

SMALL = {
    "stream": "stream:size=4M,passes=2",
    "random": "random:size=4M,n=1500",
    "stencil": "stencil:size=4M,iters=1",
    "pingpong": "pingpong:size=4M,rounds=2",
    "gemm": "gemm:size=3M,tile=256",
    "graph": "graph:size=64K",
}


def test_small_specs_cover_every_generator():
    assert set(SMALL) == set(GENERATORS)


def _consistent(m):
    assert m.bytes_h2d == m.pages_h2d * 4096
    assert m.bytes_d2h == m.pages_d2h * 4096
    assert m.pages_h2d == m.pages_faulted_in + m.pages_prefetched + m.pages_access_counter
    assert m.gpu_faults_unique <= m.gpu_faults
    assert m.data_errors == 0
    assert m.sim_time_s > 0
    if m.oversubscription <= 1.0:
        assert m.evictions == 0 and m.evicted_pages == 0
    assert m.evicted_pages <= m.evictions * 512


def _preset_generator_pairs():
    """Every preset on every generator. The default run takes every preset
    on `stream` and every generator under `naive` (both dimensions covered);
    the rest of the cross product is `slow`, to keep CI inside its budget."""
    for gen in sorted(SMALL):
        for policy in sorted(POLICIES):
            marks = () if gen == "stream" or policy == "naive" else (pytest.mark.slow,)
            yield pytest.param(policy, gen, marks=marks, id=f"{gen}-{policy}")


@pytest.mark.parametrize(("policy", "gen"), list(_preset_generator_pairs()))
def test_every_preset_on_every_generator(policy, gen):
    m = Simulation(SMALL[gen], policy).run()
    _consistent(m)
    assert m.gpu_faults > 0 and m.pages_h2d > 0
    assert m.evictions == 0  # the default device memory holds the footprint


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_oversubscribed_runs_evict_and_stay_consistent(policy):
    m = Simulation("stream:size=4M,passes=2,oversub=2", policy).run()
    _consistent(m)
    assert m.oversubscription > 1
    if getattr(POLICIES[policy], "remote_first", False):
        # maps system pages in place; only access-counter-hot pages move
        assert m.remote_accesses > 0 and m.pages_h2d == m.pages_access_counter
        return
    assert m.evictions > 0
    assert m.pages_d2h >= m.evicted_pages > 0


def test_invariants_clean_after_every_batch():
    sim = Simulation("pingpong:size=4M,rounds=2,oversub=2", "nvidia-uvm", check_invariants=True)
    m = sim.run()
    assert m.invariant_checks == m.fault_batches > 0
    assert m.evictions > 0 and m.cpu_faults > 0
    _consistent(m)


@pytest.mark.parametrize("features", [("a", "b", "c")])
def test_invariants_clean_with_series_c(features):
    sim = Simulation(
        "stream:size=4M,passes=2,oversub=2", "amd-svm", features=features, check_invariants=True
    )
    m = sim.run()
    assert m.invariant_checks > 0 and m.evictions > 0
    _consistent(m)


def test_prefetch_cuts_streaming_faults():
    naive = Simulation("stream:size=8M", "naive").run()
    uvm = Simulation("stream:size=8M", "nvidia-uvm").run()
    assert uvm.gpu_faults_unique < naive.gpu_faults_unique
    assert uvm.pages_prefetched > 0 and naive.pages_prefetched == 0
    assert uvm.pages_h2d == naive.pages_h2d == 2048
    assert uvm.sim_time_s < naive.sim_time_s


def test_oversubscription_collapses_throughput_under_lru():
    fit = Simulation("stream:size=6M,passes=3,access=4096,oversub=1", "naive").run()
    over = Simulation("stream:size=6M,passes=3,access=4096,oversub=1.5", "naive").run()
    assert fit.evictions == 0 and over.evictions > 0
    # cyclic access larger than memory: LRU evicts every page before its reuse
    assert over.pages_h2d == 3 * fit.pages_h2d
    assert over.access_throughput_gbps < fit.access_throughput_gbps / 2


def test_why_log_names_kernel_paths(tmp_path):
    sim = Simulation("pingpong:size=4M,rounds=1,oversub=2", "naive")
    sim.run()
    reasons = {(r.direction, r.reason) for r in sim.moves}
    assert ("h2d", "fault") in reasons and ("d2h", "eviction") in reasons
    assert ("d2h", "cpu-fault") in reasons
    paths = {r.reason: r.path for r in sim.moves}
    assert "migrate_device_range" in paths["eviction"]
    assert "migrate_to_ram" in paths["cpu-fault"]
    assert "migrate_vma_setup" in paths["fault"]
    n = write_moves(sim, tmp_path / "why.jsonl")
    lines = (tmp_path / "why.jsonl").read_text().splitlines()
    assert n == len(lines) == len(sim.moves)
    assert set(json.loads(lines[0])) == {"t_us", "address", "direction", "reason", "path"}
    h2d = sum(1 for r in sim.moves if r.direction == "h2d")
    assert h2d == sim.m.pages_h2d


def test_trace_is_valid_trace_event_format():
    sim = Simulation("stream:size=4M,oversub=2", "nvidia-uvm")
    sim.run()
    doc = json.loads(json.dumps(chrome_trace(sim)))
    ev = doc["traceEvents"]
    assert isinstance(ev, list) and ev
    assert doc["displayTimeUnit"] in ("ms", "ns")
    phases = {e["ph"] for e in ev}
    assert {"X", "C", "M"} <= phases
    for e in ev:
        assert isinstance(e["name"], str) and isinstance(e["pid"], int)
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["tid"], int)
        if e["ph"] == "C":
            assert all(isinstance(v, (int, float)) for v in e["args"].values())
        if e["ph"] == "i":
            assert e["s"] in ("g", "p", "t")
    batches = [e for e in ev if e["ph"] == "X" and e["name"] == "fault batch"]
    assert len(batches) == sim.m.fault_batches


def test_clock_runs_events_in_time_order():
    c = EventClock()
    seen = []
    c.schedule(5.0, lambda: seen.append(("b", c.now)))
    c.schedule(1.0, lambda: seen.append(("a", c.now)))
    c.schedule(5.0, lambda: seen.append(("c", c.now)))
    assert c.run() == 3
    assert seen == [("a", 1.0), ("b", 5.0), ("c", 5.0)]
    with pytest.raises(ValueError):
        c.schedule(1.0, lambda: None)


def test_params_overrides_and_toml(tmp_path):
    p = SimParams()
    assert p.bandwidth == pytest.approx(31.5e3)
    q = p.with_overrides(["interconnect=nvlink-c2c", "gpu_fault_latency_us=35", "fault_batch=128"])
    assert q.bandwidth == pytest.approx(450e3) and q.fault_batch == 128
    f = tmp_path / "p.toml"
    f.write_text('[params]\ninterconnect = "pcie5"\nper_fault_us = 1.5\n')
    r = load_toml(str(f))
    assert r.interconnect == "pcie5" and r.per_fault_us == 1.5
    for bad in (["nope=1"], ["fault_batch=0"], ["interconnect=isa"], ["per_fault_us=x"]):
        with pytest.raises(ParamError):
            p.with_overrides(bad).validate()


def test_trace_import_csv_and_jsonl(tmp_path):
    csvf = tmp_path / "t.csv"
    csvf.write_text(
        "time,agent,address,rw,size\n"
        "0,cpu,0x7f0000000000,w,4096\n"
        "1,gpu,0x7f0000000000,r,64\n"
        "2,gpu,0x7f0000003000,w,4096\n"
        "3,cpu,0x7f0000003000,r,8\n"
    )
    wl = make_workload(str(csvf))
    assert len(wl.accesses) == 4 and wl.footprint == 4 * 4096
    m = Simulation(wl, "naive").run()
    assert m.gpu_accesses == 2 and m.cpu_accesses == 2 and m.cpu_faults == 1
    _consistent(m)
    jl = tmp_path / "t.jsonl"
    jl.write_text(
        '{"agent": "gpu", "address": 8192, "rw": "r"}\n'
        '{"agent": "cpu", "address": 8192, "rw": "w"}\n'
    )
    assert len(make_workload(str(jl)).accesses) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("agent,address,rw\nfpga,0x1000,r\n")
    with pytest.raises(WorkloadError, match="bad.csv:2"):
        make_workload(str(bad))


def test_workload_spec_errors():
    for spec in ("nosuch", "stream:size=abc", "stream:bogus=1", "stream:oversub=-1", "stream:x"):
        with pytest.raises(WorkloadError):
            make_workload(spec)


def test_generators_are_seeded():
    a = make_workload("random:size=1M,n=100", seed=3).accesses
    b = make_workload("random:size=1M,n=100", seed=3).accesses
    c = make_workload("random:size=1M,n=100", seed=4).accesses
    assert (a == b).all() and not (a == c).all()


# --- CLI ------------------------------------------------------------------------------------
def _cli(args):
    from hmmsim.cli import main

    return CliRunner().invoke(main, args)


def test_cli_json_trace_why(tmp_path):
    t = tmp_path / "out.json"
    w = tmp_path / "why.jsonl"
    r = _cli(
        ["sim", "stream:size=4M,oversub=2", "--policy", "amd-svm", "--json"]
        + ["--trace", str(t), "--why", str(w), "--set", "gpu_fault_latency_us=30"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["policy"] == "amd-svm" and d["evictions"] > 0
    assert d["params"]["gpu_fault_latency_us"] == 30
    assert json.loads(t.read_text())["traceEvents"]
    assert w.read_text().count("\n") > 0


def test_cli_list_and_human_output():
    r = _cli(["sim", "--list"])
    assert r.exit_code == 0 and "nvidia-uvm" in r.output and "pingpong" in r.output
    r = _cli(["sim", "random:size=2M,n=200", "--device-mem", "2M"])
    assert r.exit_code == 0 and "simulated time" in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["sim"],
        ["sim", "nosuch"],
        ["sim", "stream", "--policy", "lru-magic"],
        ["sim", "stream", "--set", "bogus=1"],
        ["sim", "stream", "--interconnect", "isa"],
        ["sim", "stream", "--device-mem", "1M"],
        ["sim", "stream", "--device-mem", "lots"],
        ["sim", "/nonexistent/trace.csv"],
        ["sim", "stream", "--params", "/nonexistent.toml"],
    ],
)
def test_cli_errors_are_one_line(args):
    r = _cli(args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmsim: error:"), r.stderr
    assert "Traceback" not in r.output


def test_cli_error_one_line_from_the_entry_point():
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "hmmsim", "sim", "stream", "--policy", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmsim: error: unknown policy"), p.stderr


def test_thrashing_mitigation_pins_pingpong_pages():
    spec = "pingpong:size=128K,rounds=30,cpu=1,access=4096"
    plain = Simulation(spec, "nvidia-uvm").run()
    sim = Simulation(spec, "nvidia-uvm-thrash", check_invariants=True)
    m = sim.run()
    _consistent(m)
    assert plain.thrash_throttles == plain.thrash_pins == 0
    assert m.thrash_throttles > 0 and m.thrash_pins > 0 and m.remote_accesses > 0
    assert m.pages_h2d < plain.pages_h2d and m.cpu_faults < plain.cpu_faults


def test_pin_expires_and_the_page_migrates_again():
    from hmmsim.sim.policy import NvidiaUvmThrash

    class ShortPin(NvidiaUvmThrash):
        name = "short-pin"
        thrash_pin_us = 50.0

    spec = "pingpong:size=64K,rounds=30,cpu=1,access=4096"
    m = Simulation(spec, ShortPin()).run()
    long_pin = Simulation(spec, "nvidia-uvm-thrash").run()
    assert m.thrash_pins > 0
    assert m.pages_h2d > long_pin.pages_h2d  # unpinned pages fault and move again


def test_a_policy_in_a_few_lines():
    from hmmsim.sim.policy import Policy

    class Grab64K(Policy):
        name = "grab-64k"
        granularity = 64 << 10

    m = Simulation("random:size=4M,n=200", Grab64K()).run()
    assert m.policy == "grab-64k" and m.pages_h2d % 16 == 0 and m.pages_prefetched > 0


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from hmmsim.sim.export import write_plots

    sim = Simulation("pingpong:size=4M,rounds=1,oversub=2", "nvidia-uvm")
    sim.run()
    paths = write_plots(sim, str(tmp_path))
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    want = ["fault-latency.png", "migrations.png", "residency-heatmap.png", "residency.png"]
    assert names == want
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sim.heat and all(int(h.sum()) <= sim.dev.capacity_pages for _, h in sim.heat)


@pytest.mark.parametrize(
    "policy,spec",
    [
        ("naive", "random:size=5M,n=3000,write=0.5,oversub=2.5"),
        ("naive", "pingpong:size=2052K,rounds=3,cpu=0.5,oversub=1.9"),
        ("xe-gpusvm", "random:size=5M,n=3000,write=0.5,oversub=2.5"),
    ],
)
def test_a_batch_makes_room_before_it_migrates(policy, spec):
    """A batch whose pages land in every chunk must still find room: the
    driver evicts for the whole batch first (found by a sweep: GpuNoMemory
    when every chunk had been allocated into by the batch)."""
    m = Simulation(spec, policy, check_invariants=True, seed=7).run()
    _consistent(m)
    assert m.evictions > 0


def test_cli_params_file_and_features(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('interconnect = "nvlink-c2c"\ngpu_fault_latency_us = 40\n')
    r = _cli(
        ["sim", "stream:size=2M", "--params", str(f), "--feature", "a,b,c", "--json"]
        + ["--check-invariants"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["interconnect"] == "nvlink-c2c" and d["params"]["gpu_fault_latency_us"] == 40
    assert d["invariant_checks"] == d["fault_batches"] > 0
    bad = tmp_path / "bad.toml"
    bad.write_text("per_fault_us = 'slow'\n")
    r = _cli(["sim", "stream:size=2M", "--params", str(bad)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "spec",
    ["stream:size=3076K,passes=2,oversub=3", "pingpong:size=2052K,rounds=3,cpu=0.5,oversub=1.9"],
)
def test_device_thps_freed_then_reused_as_small_pages(spec):
    """A freed order-9 device folio's pages go back to the free list head
    first, so the old head is re-initialised (its compound state cleared)
    before any old tail is mapped as an order-0 page (found by a sweep: the
    checker saw a stale head whose large mapcount missed its tails' PTEs)."""
    sim = Simulation(spec, "amd-svm-thp", check_invariants=True, seed=3)
    m = sim.run()
    _consistent(m)
    assert sim.dev.compound_folios > 0 and m.evictions > 0
