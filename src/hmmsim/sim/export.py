"""What a simulation writes: Chrome trace events, plots, the why-it-moved log.

- ``chrome_trace(sim)``: a dict in the Trace Event Format (the JSON object
  form: ``traceEvents`` plus ``displayTimeUnit``), which chrome://tracing
  and Perfetto (ui.perfetto.dev) load. Complete events (``ph: "X"``) for
  GPU kernels, fault batches, evictions and migrate_to_ram on one thread
  per track; counter events (``ph: "C"``) for device residency; instant
  events (``ph: "i"``) for each page move when the move log is kept;
  metadata events (``ph: "M"``) naming the process and threads. Times are
  microseconds, as the format wants.
- ``write_plots(sim, dir)``: PNGs (matplotlib, the ``plot`` extra):
  residency over time, a residency heatmap (address bins x time), the
  timeline of page migrations by reason, and the fault-latency histogram.
- ``write_moves(sim, path)``: one JSON object per page move (time in us,
  address, direction, reason, kernel path).
"""

from __future__ import annotations

import json
import os

TRACKS = {"gpu": 1, "driver": 2, "cpu": 3, "moves": 4}
MAX_MOVE_EVENTS = 100_000


def chrome_trace(sim) -> dict:
    events: list[dict] = [
        {"ph": "M", "pid": 1, "tid": 0, "name": "process_name", "args": {"name": "hmmsim sim"}},
    ]
    for name, tid in TRACKS.items():
        events.append(
            {"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": name}}
        )
    for track, name, start, dur, args in sim.clock.spans:
        events.append(
            {
                "ph": "X",
                "pid": 1,
                "tid": TRACKS.get(track, 5),
                "name": name,
                "cat": track,
                "ts": round(start, 3),
                "dur": round(max(dur, 0.0), 3),
                "args": args,
            }
        )
    for name, t, values in sim.clock.counters:
        events.append({"ph": "C", "pid": 1, "name": name, "ts": round(t, 3), "args": values})
    for rec in sim.moves[:MAX_MOVE_EVENTS]:
        events.append(
            {
                "ph": "i",
                "s": "t",
                "pid": 1,
                "tid": TRACKS["moves"],
                "name": f"{rec.direction} {rec.reason}",
                "cat": "move",
                "ts": round(rec.t, 3),
                "args": {"address": hex(rec.vpn << 12), "path": rec.path},
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"metrics": sim.m.as_dict()},
    }


def write_trace(sim, path: str) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(sim), f)


def write_moves(sim, path: str) -> int:
    """The why-it-moved log as JSON lines; how many records."""
    with open(path, "w") as f:
        for rec in sim.moves:
            f.write(
                json.dumps(
                    {
                        "t_us": round(rec.t, 3),
                        "address": hex(rec.vpn << 12),
                        "direction": rec.direction,
                        "reason": rec.reason,
                        "path": rec.path,
                    }
                )
                + "\n"
            )
    return len(sim.moves)


def write_plots(sim, outdir: str) -> list[str]:
    """residency.png and fault-latency.png in outdir; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    m = sim.m
    title = f"{m.workload} / {m.policy} / {m.interconnect}"
    paths = []

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ts = [t / 1000 for t, _ in sim.residency]
    mib = [n * 4096 / (1 << 20) for _, n in sim.residency]
    ax.step(ts, mib, where="post", label="device-resident")
    ax.axhline(m.device_mem_bytes / (1 << 20), color="red", ls="--", lw=1, label="device memory")
    ax.axhline(m.footprint_bytes / (1 << 20), color="gray", ls=":", lw=1, label="footprint")
    ax.set_xlabel("simulated time (ms)")
    ax.set_ylabel("MiB on the device")
    ax.set_title(f"Residency: {title}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    p = os.path.join(outdir, "residency.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    if sim.heat:
        import numpy as np

        fig, ax = plt.subplots(figsize=(8, 3.5))
        t = np.array([h[0] for h in sim.heat]) / 1000
        grid = np.stack([h[1] for h in sim.heat], axis=1).astype(float)
        per_bin = max(1.0, sim.workload.npages / sim.heat_bins)
        edges = np.append(t, t[-1] + max(1e-3, (t[-1] - t[0]) / max(1, len(t))))
        mesh = ax.pcolormesh(
            edges,
            np.linspace(0, m.footprint_bytes / (1 << 20), sim.heat_bins + 1),
            grid / per_bin,
            shading="flat",
            vmin=0,
            vmax=1,
            cmap="viridis",
        )
        fig.colorbar(mesh, ax=ax, label="fraction on the device")
        ax.set_xlabel("simulated time (ms)")
        ax.set_ylabel("buffer offset (MiB)")
        ax.set_title(f"Residency heatmap: {title}")
        fig.tight_layout()
        p = os.path.join(outdir, "residency-heatmap.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    if sim.moves:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        base = sim.base >> 12
        colors = {
            "fault": "C0",
            "prefetch": "C2",
            "access-counter": "C4",
            "eviction": "C3",
            "cpu-fault": "C1",
        }
        for reason, color in colors.items():
            pts = [
                (r.t / 1000, (r.vpn - base) * 4096 / (1 << 20))
                for r in sim.moves
                if r.reason == reason
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=2, c=color, label=reason, marker="s", linewidths=0)
        ax.set_xlabel("simulated time (ms)")
        ax.set_ylabel("buffer offset (MiB)")
        ax.set_title(f"Page migrations: {title}")
        ax.legend(loc="upper right", fontsize="small", markerscale=4)
        fig.tight_layout()
        p = os.path.join(outdir, "migrations.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    lat = sim.latencies
    if lat:
        ax.hist(lat, bins=50)
    ax.set_xlabel("fault latency: enqueue to replay (us)")
    ax.set_ylabel("faults")
    ax.set_title(f"GPU fault latency: {title} ({len(lat)} faults)")
    fig.tight_layout()
    p = os.path.join(outdir, "fault-latency.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
