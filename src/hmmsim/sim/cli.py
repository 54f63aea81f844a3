"""The `hmmsim sim` command (registered by hmmsim.cli)."""

from __future__ import annotations

import json

import click

from hmmsim.cli_options import (
    build_config,
    check_host_memory,
    conflict_option,
    data_plane_option,
    feature_option,
    kernel_host_bytes,
)


def _list_text() -> str:
    from hmmsim.sim.params import INTERCONNECTS
    from hmmsim.sim.policy import POLICIES
    from hmmsim.sim.workloads import GENERATORS

    lines = ["workloads (NAME[:key=value,...], or a .csv/.jsonl trace):"]
    for name, (_fn, size, desc) in GENERATORS.items():
        lines.append(f"  {name:10s} {desc} (default size {size >> 20}M)")
    lines.append("policies (--policy):")
    for name, cls in POLICIES.items():
        lines.append(f"  {name:10s} {cls.description}")
    lines.append("interconnects (--interconnect):")
    for name, (bw, lat) in INTERCONNECTS.items():
        lines.append(f"  {name:10s} {bw:g} GB/s per direction, {lat:g} us per copy")
    return "\n".join(lines)


def _human(m: dict) -> str:
    mib = 1 << 20
    rows = [
        ("workload", m["workload"]),
        ("policy", m["policy"]),
        ("interconnect", m["interconnect"]),
        ("footprint", f"{m['footprint_bytes'] / mib:.1f} MiB"),
        ("device memory", f"{m['device_mem_bytes'] / mib:.1f} MiB"),
        ("oversubscription", f"{m['oversubscription']:.2f}x"),
        ("accesses (gpu / cpu)", f"{m['gpu_accesses']} / {m['cpu_accesses']}"),
        (
            "GPU faults (entries / unique / batches)",
            f"{m['gpu_faults']} / {m['gpu_faults_unique']} / {m['fault_batches']}",
        ),
        ("CPU faults (migrate_to_ram / other)", f"{m['cpu_faults']} / {m['cpu_faults_other']}"),
        ("pages device->host by CPU faults", str(m["pages_d2h_cpu"])),
        (
            "pages host->device (fault / prefetch)",
            f"{m['pages_h2d']} ({m['pages_faulted_in']} / {m['pages_prefetched']})",
        ),
        ("pages device->host", str(m["pages_d2h"])),
        ("bytes h2d / d2h", f"{m['bytes_h2d'] / mib:.1f} / {m['bytes_d2h'] / mib:.1f} MiB"),
        ("evictions (chunks / pages)", f"{m['evictions']} / {m['evicted_pages']}"),
        ("remote accesses", str(m["remote_accesses"])),
        (
            "access counters (notifications / batches / pages)",
            f"{m['ac_notifications']} / {m['ac_batches']} / {m['pages_access_counter']}",
        ),
        ("simulated time", f"{m['sim_time_s'] * 1e3:.3f} ms"),
        ("achieved migration bandwidth", f"{m['achieved_bandwidth_gbps']:.2f} GB/s"),
        ("access throughput", f"{m['access_throughput_gbps']:.2f} GB/s"),
        ("data errors", str(m["data_errors"])),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


@click.command("sim")
@click.argument("workload", required=False)
@click.option(
    "--policy",
    default="naive",
    show_default=True,
    help="Migration policy: naive, nvidia-uvm, nvidia-uvm-thrash, amd-svm, amd-svm-thp, "
    "xe-gpusvm (--list describes them).",
)
@click.option(
    "--device-mem",
    default=None,
    help="Device memory (e.g. 64M; whole 2 MiB chunks). Default: footprint / oversub, "
    "or room for the whole footprint.",
)
@click.option("--interconnect", default=None, help="pcie3, pcie4, pcie5 or nvlink-c2c.")
@click.option(
    "--params",
    "params_file",
    default=None,
    help="TOML file of cost-model parameters (top-level keys or a [params] table).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one cost-model parameter (repeatable), e.g. --set gpu_fault_latency_us=30.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@click.option("--plot", "plot_dir", default=None, help="Write residency and latency PNGs here.")
@click.option("--trace", "trace_path", default=None, help="Write a Chrome/Perfetto trace JSON.")
@click.option("--why", "why_path", default=None, help="Write the why-it-moved log (JSON lines).")
@click.option(
    "--check-invariants", is_flag=True, help="Run the invariant checker after every fault batch."
)
@click.option("--list", "list_", is_flag=True, help="List workloads, policies, interconnects.")
@data_plane_option(
    "Page contents: 4096 bytes per page, or one 64-bit token per page (8 bytes of host "
    "memory; the simulator's writes fit in it), for footprints beyond host memory."
)
@feature_option()
@conflict_option
def sim_command(
    workload,
    policy,
    device_mem,
    interconnect,
    params_file,
    overrides,
    seed,
    as_json,
    plot_dir,
    trace_path,
    why_path,
    check_invariants,
    list_,
    data_plane,
    features,
    conflict_resolution,
) -> None:
    """Simulate WORKLOAD on a GPU-like device with a migration POLICY.

    WORKLOAD is a generator spec such as stream:size=64M,passes=4,oversub=1.5
    or a .csv/.jsonl trace (docs/simulation.md gives the formats). Prints the
    metrics; --plot, --trace and --why write the figures, a trace for
    ui.perfetto.dev and the per-page move log.
    """
    from hmmsim.sim.engine import SimError, Simulation
    from hmmsim.sim.params import ParamError, SimParams, load_toml
    from hmmsim.sim.policy import make_policy
    from hmmsim.sim.workloads import WorkloadError, make_workload, parse_size

    if list_:
        click.echo(_list_text())
        return
    if not workload:
        raise click.UsageError("give a WORKLOAD (hmmsim sim --list shows them)")
    try:
        params = load_toml(params_file) if params_file else SimParams()
        if interconnect is not None:
            params = params.replace(interconnect=interconnect)
        params = params.with_overrides(overrides)
        params.validate()
    except ParamError as e:
        raise click.UsageError(str(e)) from None
    try:
        pol = make_policy(policy)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        wl = make_workload(workload, seed=seed)
        dev_bytes = parse_size(device_mem) if device_mem else None
    except WorkloadError as e:
        raise click.UsageError(str(e)) from None
    if dev_bytes is not None and dev_bytes < 2 << 20:
        raise click.UsageError(f"--device-mem {device_mem}: at least one 2 MiB chunk")
    if plot_dir:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError("--plot needs matplotlib: pip install 'hmmsim[plot]'") from None
    # the modelled RAM (about 1.25x the footprint, or 1.25x the touched pages
    # of a sparse workload) and the device's bytes (at most what is touched)
    from hmmsim.sim.engine import modelled_ram_bytes, touched_pages

    touched = touched_pages(wl)
    ram = modelled_ram_bytes(wl, touched)
    dev_need = min(dev_bytes or wl.footprint, len(touched) * 4096)
    if data_plane == "tokens":  # a token and a struct page per page, the page tables' words
        need = kernel_host_bytes(ram + dev_need, "tokens") + ram // 256 + (64 << 20)
    else:
        need = ram + ram // 4 + dev_need + (64 << 20)
    check_host_memory(need, f"workload {workload}")
    cfg = build_config(features, "mainline", conflict_resolution, data_plane=data_plane)
    try:
        sim = Simulation(
            wl,
            pol,
            params,
            device_mem=dev_bytes,
            config=cfg,
            check_invariants=check_invariants,
            seed=seed,
            # the per-page move log only where an output shows it
            log_moves=bool(why_path or trace_path or plot_dir),
        )
        progress = None
        if not as_json and len(wl.accesses) > 200_000:
            from hmmsim.cli_options import stderr_is_tty

            if stderr_is_tty():

                def progress(i, n):
                    click.echo(f"\r{100 * i // n:3d}% of {n} accesses", nl=False, err=True)

        m = sim.run(progress)
        if progress is not None:
            click.echo("\r", nl=False, err=True)
    except SimError as e:
        raise click.ClickException(str(e)) from None
    from hmmsim.sim import export

    written = []
    if trace_path:
        export.write_trace(sim, trace_path)
        written.append(trace_path)
    if why_path:
        export.write_moves(sim, why_path)
        written.append(why_path)
    if plot_dir:
        written += export.write_plots(sim, plot_dir)
    d = m.as_dict()
    if as_json:
        d["params"] = params.as_dict()
        d["data_plane"] = data_plane
        d["written"] = written
        click.echo(json.dumps(d))
        return
    click.echo(_human(d))
    for p in written:
        click.echo(f"wrote {p}")


@click.command("sweep")
@click.argument("grid", required=False)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default: the CPU count); with --ray, the local cluster's CPUs.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[=ADDRESS]",
    help="Run the points as Ray tasks: --ray starts a local cluster, --ray=ADDRESS "
    "connects (ray.init(address=...)). Needs pip install '.[ray]'.",
)
@click.option(
    "--out",
    default="sweep-results.csv",
    show_default=True,
    help="Results, one row per point: CSV, or Parquet when it ends in .parquet (pyarrow).",
)
@click.option("--plot", "plot_path", default=None, help="Write a summary plot (PNG).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def sweep_command(grid, workers, ray_address, out, plot_path, quiet) -> None:
    """Run every point of a GRID (TOML: workloads x policies x parameters).

    Each point is one `hmmsim sim` run on its own Kernel with its own seed;
    the rows are the same, sorted by point, whatever the number of workers.
    docs/simulation.md ("Sweeps") gives the format; docs/examples/sweep-grid.toml
    is an example.
    """
    import os
    import time

    from hmmsim.sim.sweep import (
        SweepError,
        load_grid,
        ray_module,
        run_grid,
        summary_plot,
        write_rows,
    )

    if grid is None and ray_address and ray_address.lower().endswith(".toml"):
        grid, ray_address = ray_address, "local"  # `--ray grid.toml`
    if not grid:
        raise click.UsageError("give a GRID file (docs/examples/sweep-grid.toml is an example)")
    try:
        if ray_address is not None:
            ray_module()
        if out.lower().endswith(".parquet"):
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise SweepError(
                    f"--out {out}: Parquet output needs pyarrow: pip install pyarrow"
                ) from None
        if plot_path:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise SweepError("--plot needs matplotlib: pip install 'hmmsim[plot]'") from None
        g = load_grid(grid)
    except SweepError as e:
        raise click.UsageError(str(e)) from None
    if workers is None:
        workers = 1 if ray_address is not None else (os.cpu_count() or 1)
    points = g.points()
    done = []
    t0 = time.perf_counter()

    def on_row(row):
        done.append(row)
        if not quiet:
            bad = f"  ERROR {row['error']}" if row["error"] else ""
            click.echo(
                f"[{len(done)}/{len(points)}] point {row['point']}: {row['workload_spec']} "
                f"{row['policy']} seed {row['seed']}{bad}",
                err=True,
            )

    try:
        rows = run_grid(g, workers=workers, ray=ray_address, on_row=on_row)
        write_rows(rows, g.columns(), out)
    except SweepError as e:
        raise click.ClickException(str(e)) from None
    errors = sum(1 for r in rows if r["error"])
    how = f"Ray ({ray_address})" if ray_address is not None else f"{workers} worker(s)"
    click.echo(
        f"{len(rows)} points ({errors} failed) in {time.perf_counter() - t0:.1f} s on {how}; "
        f"wrote {out}"
    )
    if plot_path:
        summary_plot(g, rows, plot_path)
        click.echo(f"wrote {plot_path}")
    if errors:
        raise SystemExit(1)
