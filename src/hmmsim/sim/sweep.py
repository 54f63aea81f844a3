"""`hmmsim sweep`: a grid of workloads x policies x parameters, run in parallel.

A grid is a TOML file (docs/simulation.md, "Sweeps"; an example is
docs/examples/sweep-grid.toml)::

    workloads = ["stream:size=8M,passes=2", "random:size=8M,n=20000"]
    policies = ["naive", "nvidia-uvm"]
    seeds = [0, 1]                  # optional, default [0]
    features = ["a", "b"]           # optional seed series (as `hmmsim sim --feature`)

    [params]                        # optional: cost-model values every point shares
    gpu_fault_latency_us = 30

    [grid]                          # optional: axes, every combination is a point
    interconnect = ["pcie4", "pcie5"]
    oversub = [1.0, 1.5]            # a workload parameter: appended to each spec
    device_mem = ["16M"]            # device memory (overrides oversub's sizing)
    data_plane = ["bytes", "tokens"]  # KConfig.data_plane (as `hmmsim sim --data-plane`)

A top-level ``data_plane = "tokens"`` sets every point's page contents
(hmmsim.data_plane; default "bytes"); as a ``[grid]`` axis it varies them.
A ``[grid]`` key that names a cost-model parameter (``SimParams``) sets it,
``device_mem`` sets the device memory, and any other key is appended to
every workload spec as ``key=value`` (so it must be a parameter of each
generator). Points are enumerated in a fixed order (workload, policy, axes
in file order, seed) and numbered; each point runs the simulation engine
(``hmmsim.sim.engine.Simulation``) on its own Kernel with its own seed, so
a point's row depends on nothing but the point. The rows come back sorted
by point number, whatever the executor and the number of workers:
``concurrent.futures.ProcessPoolExecutor`` by default, Ray
(``ray.init(address=...)``; https://docs.ray.io) with ``ray=ADDRESS`` or a
local Ray cluster.

Results: one row per point (the point's columns, then every
``Metrics`` field, then ``error``: empty, or the one-line reason the point
could not run) to CSV, or Parquet when the path ends in ``.parquet``
(pyarrow); ``summary_plot`` draws one metric per workload, policy and axis
combination (matplotlib).
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass, field, fields

from hmmsim.sim.engine import Metrics

#: Top-level keys a grid file may have.
GRID_KEYS = (
    "workloads",
    "policies",
    "seeds",
    "features",
    "data_plane",
    "params",
    "grid",
    "plot_metric",
)
#: The KConfig.data_plane values a grid may name (hmmsim.data_plane.DATA_PLANES).
DATA_PLANES = ("bytes", "tokens")
#: The metric the summary plot shows unless the grid says ``plot_metric``.
DEFAULT_PLOT_METRIC = "sim_time_s"
METRIC_FIELDS = [f.name for f in fields(Metrics)]


class SweepError(ValueError):
    """A bad grid file or option (the CLI prints it on one line)."""


@dataclass
class Grid:
    workloads: list[str]
    policies: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    features: list[str] = field(default_factory=list)
    #: every point's KConfig.data_plane unless a data_plane axis varies it;
    #: None: not given (bytes, and no data_plane column)
    data_plane: str | None = None
    params: dict = field(default_factory=dict)
    axes: dict[str, list] = field(default_factory=dict)
    plot_metric: str = DEFAULT_PLOT_METRIC
    path: str = "<grid>"

    def points(self) -> list[dict]:
        """Every point, numbered, in the fixed order workload, policy, axes, seed."""
        from hmmsim.sim.params import SimParams

        param_names = {f.name for f in fields(SimParams)}
        names = list(self.axes)
        out = []
        for spec in self.workloads:
            for pol in self.policies:
                for combo in itertools.product(*(self.axes[n] for n in names)):
                    for seed in self.seeds:
                        values = dict(zip(names, combo, strict=True))
                        params = dict(self.params)
                        extra = []
                        device_mem = None
                        data_plane = self.data_plane or "bytes"
                        for n, v in values.items():
                            if n in param_names:
                                params[n] = v
                            elif n == "device_mem":
                                device_mem = v
                            elif n == "data_plane":
                                data_plane = v
                            else:
                                extra.append(f"{n}={v}")
                        out.append(
                            {
                                "point": len(out),
                                "workload_spec": _with_params(spec, extra),
                                "workload_index": self.workloads.index(spec),
                                "policy": pol,
                                "seed": seed,
                                "axes": values,
                                "params": params,
                                "device_mem": device_mem,
                                "data_plane": data_plane,
                                "features": list(self.features),
                            }
                        )
        return out

    def columns(self) -> list[str]:
        """The CSV header: point columns, axes, then the metrics and ``error``."""
        head = ["point", "workload_spec", "policy", "seed"]
        if self.data_plane is not None and "data_plane" not in self.axes:
            head.append("data_plane")
        head += [n for n in self.axes if n not in head]
        return head + [m for m in METRIC_FIELDS if m not in head] + ["error"]


def _with_params(spec: str, extra: list[str]) -> str:
    if not extra:
        return spec
    low = spec.lower()
    if low.endswith(".csv") or low.endswith(".jsonl"):
        raise SweepError(
            f"grid axes {', '.join(e.split('=')[0] for e in extra)} are workload parameters, "
            f"which trace {spec!r} cannot take"
        )
    sep = "," if ":" in spec else ":"
    return spec + sep + ",".join(extra)


def _list(data: dict, key: str, path: str, kind=str, default=None) -> list:
    v = data.get(key, default)
    if v is None:
        raise SweepError(f"{path}: needs {key} = [...]")
    if not isinstance(v, list):
        v = [v]
    if not v:
        raise SweepError(f"{path}: {key} is empty")
    for x in v:
        if not isinstance(x, kind) or isinstance(x, bool):
            raise SweepError(f"{path}: {key} must hold {kind.__name__}s, not {x!r}")
    return v


def load_grid(path: str) -> Grid:
    """Read and check a grid file; every problem is a one-line SweepError."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SweepError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: not valid TOML ({e})") from None
    return grid_from_dict(data, path)


def grid_from_dict(data: dict, path: str = "<grid>") -> Grid:
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise SweepError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(GRID_KEYS)})"
        )
    g = Grid(
        workloads=_list(data, "workloads", path),
        policies=_list(data, "policies", path),
        seeds=_list(data, "seeds", path, int, [0]),
        features=_list(data, "features", path, str, []) if data.get("features") else [],
        data_plane=data.get("data_plane"),
        path=path,
    )
    params = data.get("params", {})
    axes = data.get("grid", {})
    if not isinstance(params, dict) or not isinstance(axes, dict):
        raise SweepError(f"{path}: [params] and [grid] must be tables")
    g.params = dict(params)
    for name, values in axes.items():
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise SweepError(f"{path}: grid axis {name} is empty")
        g.axes[name] = values
    g.plot_metric = data.get("plot_metric", DEFAULT_PLOT_METRIC)
    if g.plot_metric not in METRIC_FIELDS:
        raise SweepError(f"{path}: plot_metric {g.plot_metric!r} is not a metric")
    check_grid(g)
    return g


def check_grid(g: Grid) -> None:
    """Refuse what would fail in every worker: unknown policies, parameters,
    workloads and features (before any point runs)."""
    from hmmsim.kconfig import KConfig
    from hmmsim.sim.params import ParamError, SimParams
    from hmmsim.sim.policy import POLICIES
    from hmmsim.sim.workloads import GENERATORS, WorkloadError, parse_size

    where = g.path
    planes = [g.data_plane] if g.data_plane is not None else []
    for v in planes + list(g.axes.get("data_plane", [])):
        if v not in DATA_PLANES:
            raise SweepError(
                f"{where}: data_plane must be one of {', '.join(DATA_PLANES)}, not {v!r}"
            )
    for pol in g.policies:
        if pol not in POLICIES:
            raise SweepError(f"{where}: unknown policy {pol!r} (choose from {', '.join(POLICIES)})")
    for spec in g.workloads:
        low = spec.lower()
        if low.endswith(".csv") or low.endswith(".jsonl"):
            if not os.path.exists(spec):
                raise SweepError(f"{where}: trace {spec!r} does not exist")
            continue
        name = spec.partition(":")[0]
        if name not in GENERATORS:
            raise SweepError(
                f"{where}: unknown workload {name!r} (choose from {', '.join(GENERATORS)})"
            )
    for p in g.points():
        _check_spec_keys(p["workload_spec"], where)
    try:
        base = SimParams().replace(**g.params)
        base.validate()
        for p in g.points():
            SimParams().replace(**p["params"]).validate()
            if p["device_mem"] is not None and parse_size(str(p["device_mem"])) < 2 << 20:
                raise SweepError(f"{where}: device_mem {p['device_mem']}: at least one 2 MiB chunk")
    except (ParamError, WorkloadError, TypeError) as e:
        raise SweepError(f"{where}: {e}") from None
    if g.features:
        from hmmsim.cli_options import resolution_for, series_set

        try:
            fs = series_set(tuple(g.features), "mainline")
            KConfig(features=fs, conflict_resolution=resolution_for(fs, None))
        except Exception as e:  # ConfigError, click.UsageError
            msg = getattr(e, "message", None) or str(e)
            raise SweepError(f"{where}: features {g.features}: {msg}") from None


def _check_spec_keys(spec: str, where: str) -> None:
    """A generator spec's keys are the generator's parameters (before any
    point runs: a typo in an axis would otherwise fail every point)."""
    import inspect

    from hmmsim.sim.workloads import GENERATORS

    low = spec.lower()
    if low.endswith(".csv") or low.endswith(".jsonl"):
        return
    name, _, rest = spec.partition(":")
    fn = GENERATORS[name][0]
    allowed = (set(inspect.signature(fn).parameters) - {"seed"}) | {"size", "oversub"}
    for item in filter(None, rest.split(",")):
        key, sep, _v = item.partition("=")
        if not sep:
            raise SweepError(f"{where}: {spec!r}: expected key=value, got {item!r}")
        if key.strip() not in allowed:
            raise SweepError(
                f"{where}: {spec!r}: {name} has no parameter {key.strip()!r} "
                f"(known: {', '.join(sorted(allowed))})"
            )


def run_point(point: dict) -> dict:
    """Run one point (in a worker); its row. A point that cannot run gives a
    row with empty metrics and the reason in ``error``."""
    from hmmsim.sim.engine import SimError, Simulation
    from hmmsim.sim.params import ParamError, SimParams
    from hmmsim.sim.workloads import WorkloadError, make_workload, parse_size

    row = {
        "point": point["point"],
        "workload_spec": point["workload_spec"],
        "policy": point["policy"],
        "seed": point["seed"],
    }
    row["data_plane"] = point.get("data_plane", "bytes")
    for n, v in point["axes"].items():
        row.setdefault(n, v)
    try:
        params = SimParams().replace(**point["params"])
        params.validate()
        wl = make_workload(point["workload_spec"], seed=point["seed"])
        dev = parse_size(str(point["device_mem"])) if point["device_mem"] is not None else None
        cfg = None
        plane = point.get("data_plane", "bytes")
        if point["features"] or plane != "bytes":
            from hmmsim.cli_options import resolution_for, series_set
            from hmmsim.kconfig import KConfig

            fs = series_set(tuple(point["features"]), "mainline")
            cfg = KConfig(
                features=fs, conflict_resolution=resolution_for(fs, None), data_plane=plane
            )
        sim = Simulation(
            wl,
            point["policy"],
            params,
            device_mem=dev,
            config=cfg,
            seed=point["seed"],
            log_moves=False,
        )
        m = sim.run().as_dict()
        error = ""
    except (SimError, ParamError, WorkloadError, ValueError, MemoryError) as e:
        m = {}
        error = f"{type(e).__name__}: {e}".splitlines()[0]
    for k in METRIC_FIELDS:
        row.setdefault(k, m.get(k))
    row["error"] = error
    return row


def _run_local(points: list[dict], workers: int, on_row) -> list[dict]:
    if workers <= 1 or len(points) <= 1:
        rows = []
        for p in points:
            rows.append(run_point(p))
            on_row(rows[-1])
        return rows
    from concurrent.futures import ProcessPoolExecutor, as_completed

    rows = []
    with ProcessPoolExecutor(max_workers=min(workers, len(points))) as ex:
        futs = [ex.submit(run_point, p) for p in points]
        try:
            for f in as_completed(futs):
                rows.append(f.result())
                on_row(rows[-1])
        except BaseException:
            for f in futs:
                f.cancel()
            raise
    return rows


def ray_module():
    """Import ray, or a one-line SweepError naming the extra."""
    try:
        import ray
    except ImportError:
        raise SweepError(
            "--ray needs Ray: pip install '.[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return ray


def ray_session(address: str | None, num_cpus: int | None = None):
    """ray.init for a run: connect to ADDRESS, or start a local cluster
    (``num_cpus`` CPUs); returns (ray, started) where started says whether
    the caller should shut it down."""
    ray = ray_module()
    if ray.is_initialized():
        return ray, False
    kw: dict = {"ignore_reinit_error": True, "log_to_driver": False}
    if address and address != "local":
        kw["address"] = address
    elif num_cpus:
        kw["num_cpus"] = num_cpus
    try:
        ray.init(**kw)
    except Exception as e:  # ConnectionError and Ray's own errors
        raise SweepError(f"ray.init({address or ''}): {str(e).splitlines()[0]}") from None
    return ray, True


def _run_ray(points: list[dict], address: str | None, workers: int | None, on_row) -> list[dict]:
    ray, started = ray_session(address, workers)
    try:
        remote = ray.remote(run_point)
        refs = [remote.remote(p) for p in points]
        rows = []
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                rows.append(ray.get(r))
                on_row(rows[-1])
        return rows
    finally:
        if started:
            ray.shutdown()


def run_grid(
    grid: Grid,
    workers: int = 1,
    ray: str | None = None,
    on_row=None,
) -> list[dict]:
    """Run every point; rows sorted by point number.

    workers: processes of the local pool (1: in this process); with ray
    (an address, or "local" for a local cluster of ``workers`` CPUs) the
    points are Ray tasks instead.
    """
    points = grid.points()
    on_row = on_row or (lambda row: None)
    if ray is not None:
        rows = _run_ray(points, ray, workers if workers > 1 else None, on_row)
    else:
        rows = _run_local(points, workers, on_row)
    rows.sort(key=lambda r: r["point"])
    return rows


def write_rows(rows: list[dict], columns: list[str], path: str) -> None:
    """CSV, or Parquet when path ends in .parquet (needs pyarrow)."""
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SweepError(f"{path}: Parquet output needs pyarrow: pip install pyarrow") from None
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
        pq.write_table(table, path)
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})


def summary_plot(grid: Grid, rows: list[dict], path: str, metric: str | None = None) -> str:
    """One panel per workload: ``metric`` (mean over seeds) per axis combination
    (groups) and policy (bars). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = metric or grid.plot_metric
    axes_names = list(grid.axes)
    specs = list(dict.fromkeys(grid.workloads))
    combos = list(itertools.product(*(grid.axes[n] for n in axes_names))) or [()]
    labels = [
        ", ".join(f"{n}={v}" for n, v in zip(axes_names, c, strict=True)) or "all" for c in combos
    ]
    fig, axs = plt.subplots(
        len(specs),
        1,
        figsize=(
            max(6.0, 1.2 * len(combos) * max(1, len(grid.policies)) / 2 + 3),
            3.2 * len(specs),
        ),
        squeeze=False,
    )
    width = 0.8 / max(1, len(grid.policies))
    base = {p["point"]: grid.workloads[p["workload_index"]] for p in grid.points()}
    for spec_i, spec in enumerate(specs):
        ax = axs[spec_i][0]
        x = np.arange(len(combos))
        for pi, pol in enumerate(grid.policies):
            vals = []
            for c in combos:
                want = dict(zip(axes_names, c, strict=True))
                got = [
                    r[metric]
                    for r in rows
                    if r["policy"] == pol
                    and base.get(r["point"]) == spec
                    and all(r.get(n) == v for n, v in want.items())
                    and r.get(metric) is not None
                ]
                vals.append(float(np.mean(got)) if got else np.nan)
            ax.bar(x + (pi - (len(grid.policies) - 1) / 2) * width, vals, width, label=pol)
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title(spec, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"hmmsim sweep {os.path.basename(grid.path)}: {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "Grid",
    "SweepError",
    "check_grid",
    "grid_from_dict",
    "load_grid",
    "run_grid",
    "run_point",
    "summary_plot",
    "write_rows",
]
