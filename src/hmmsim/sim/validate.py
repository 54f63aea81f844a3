"""The validation runs behind docs/simulation.md's tables.

``python -m hmmsim.sim.validate [--size 16M]`` runs

1. prefetch vs none on a streaming workload (every preset), and
2. an oversubscription sweep of a cyclic 8-pass stream under LRU,
3. thrashing mitigation on a tight CPU-GPU ping-pong,
4. fault-driven migration vs access counters on sparse and dense random
   reads,
5. an oversubscription sweep of a tiled GEMM, and
6. an oversubscription sweep of a graph traversal (BFS, irregular),

and prints the tables as Markdown. The numbers in docs/simulation.md come
from this script at its defaults (the cost model's default parameters).
"""

from __future__ import annotations

import argparse

from hmmsim.sim.engine import Simulation
from hmmsim.sim.policy import POLICIES

OVERSUB = (0.5, 1.0, 1.1, 1.25, 1.5, 2.0)
PASSES = 8


def prefetch_table(size: str) -> list[str]:
    rows = [
        "| policy | GPU fault entries | unique faults | batches | pages h2d (prefetched) "
        "| GPU time (ms) | GPU throughput (GB/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in POLICIES:
        m = Simulation(f"stream:size={size}", name, log_moves=False).run()
        rows.append(
            f"| {name} | {m.gpu_faults} | {m.gpu_faults_unique} | {m.fault_batches} | "
            f"{m.pages_h2d} ({m.pages_prefetched}) | {m.gpu_time_s * 1e3:.2f} | "
            f"{m.gpu_throughput_gbps:.2f} |"
        )
    return rows


def oversub_table(size: str, policies=("naive", "amd-svm")) -> list[str]:
    rows = [
        "| policy | oversubscription | evicted chunks | pages h2d | pages d2h "
        "| GPU time (ms) | GPU throughput (GB/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in policies:
        for r in OVERSUB:
            spec = f"stream:size={size},passes={PASSES},access=4096,oversub={r}"
            m = Simulation(spec, name, log_moves=False).run()
            rows.append(
                f"| {name} | {m.oversubscription:.2f} | {m.evictions} | {m.pages_h2d} | "
                f"{m.pages_d2h} | {m.gpu_time_s * 1e3:.2f} | {m.gpu_throughput_gbps:.2f} |"
            )
    return rows


PINGPONG = "pingpong:size=256K,rounds=40,cpu=1,access=4096"


def thrash_table() -> list[str]:
    rows = [
        "| policy | GPU unique faults | pages h2d | pages d2h | remote accesses "
        "| throttles | pinned faults | simulated time (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("naive", "nvidia-uvm", "nvidia-uvm-thrash"):
        m = Simulation(PINGPONG, name, log_moves=False).run()
        rows.append(
            f"| {name} | {m.gpu_faults_unique} | {m.pages_h2d} | {m.pages_d2h} | "
            f"{m.remote_accesses} | {m.thrash_throttles} | {m.thrash_pins} | "
            f"{m.sim_time_s * 1e3:.2f} |"
        )
    return rows


AC_POLICIES = ("naive", "nvidia-uvm", "nvidia-uvm-ac")


def access_counter_table(size: str, ns=(1024, 65536)) -> list[str]:
    """Fault-driven migration vs access counters on uniform random reads."""
    rows = [
        "| workload | policy | pages h2d | by faults + prefetch | by access counters "
        "| notifications (batches) | remote accesses | GPU time (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        spec = f"random:size={size},n={n},write=0"
        for name in AC_POLICIES:
            m = Simulation(spec, name, log_moves=False).run()
            rows.append(
                f"| `{spec}` | {name} | {m.pages_h2d} | "
                f"{m.pages_faulted_in + m.pages_prefetched} | {m.pages_access_counter} | "
                f"{m.ac_notifications} ({m.ac_batches}) | {m.remote_accesses} | "
                f"{m.gpu_time_s * 1e3:.2f} |"
            )
    return rows


GEMM = "gemm:size=12M,tile=128"
GEMM_OVERSUB = (1.0, 1.5, 2.0, 3.0)


def gemm_table(policies=("naive", "nvidia-uvm", "amd-svm")) -> list[str]:
    rows = [
        "| policy | oversubscription | evicted chunks | pages h2d | pages d2h "
        "| GPU time (ms) | GPU throughput (GB/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in policies:
        for r in GEMM_OVERSUB:
            m = Simulation(f"{GEMM},oversub={r}", name, log_moves=False).run()
            rows.append(
                f"| {name} | {m.oversubscription:.2f} | {m.evictions} | {m.pages_h2d} | "
                f"{m.pages_d2h} | {m.gpu_time_s * 1e3:.2f} | {m.gpu_throughput_gbps:.2f} |"
            )
    return rows


GRAPH = "graph:size=12M"
GRAPH_OVERSUB = (1.0, 1.5, 2.0, 3.0)


def graph_table(policies=("naive", "nvidia-uvm", "amd-svm")) -> list[str]:
    """BFS over a power-law graph: data-dependent, irregular accesses."""
    rows = [
        "| policy | oversubscription | GPU unique faults | evicted chunks | pages h2d "
        "| pages d2h | GPU time (ms) | GPU throughput (GB/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from hmmsim.sim.engine import default_device_mem
    from hmmsim.sim.workloads import make_workload

    wl = make_workload(GRAPH)  # generated once (a BFS trace takes seconds)
    for name in policies:
        for r in GRAPH_OVERSUB:
            dev = default_device_mem(wl.footprint, r)
            m = Simulation(wl, name, device_mem=dev, log_moves=False).run()
            rows.append(
                f"| {name} | {m.oversubscription:.2f} | {m.gpu_faults_unique} | {m.evictions} | "
                f"{m.pages_h2d} | {m.pages_d2h} | {m.gpu_time_s * 1e3:.2f} | "
                f"{m.gpu_throughput_gbps:.2f} |"
            )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="16M")
    ap.add_argument("--only", choices=("all", "new", "ac", "graph"), default="all")
    a = ap.parse_args(argv)
    if a.only in ("ac", "graph"):
        if a.only == "ac":
            print(f"## Access counters on random:size={a.size}\n")
            print("\n".join(access_counter_table(a.size)))
        else:
            print(f"## Oversubscription, {GRAPH}\n")
            print("\n".join(graph_table()))
        return
    if a.only == "new":
        print(f"## Thrashing mitigation on {PINGPONG}\n")
        print("\n".join(thrash_table()))
        print(f"\n## Access counters on random:size={a.size}\n")
        print("\n".join(access_counter_table(a.size)))
        print(f"\n## Oversubscription, {GEMM}\n")
        print("\n".join(gemm_table()))
        print(f"\n## Oversubscription, {GRAPH}\n")
        print("\n".join(graph_table()))
        return
    print(f"## Prefetch on stream:size={a.size} (PCIe 4 x16)\n")
    print("\n".join(prefetch_table(a.size)))
    print(f"\n## Oversubscription, stream:size={a.size},passes={PASSES} under LRU\n")
    print("\n".join(oversub_table(a.size)))
    print(f"\n## Thrashing mitigation on {PINGPONG}\n")
    print("\n".join(thrash_table()))
    print(f"\n## Access counters on random:size={a.size}\n")
    print("\n".join(access_counter_table(a.size)))
    print(f"\n## Oversubscription, {GEMM}\n")
    print("\n".join(gemm_table()))
    print(f"\n## Oversubscription, {GRAPH}\n")
    print("\n".join(graph_table()))


if __name__ == "__main__":
    main()
