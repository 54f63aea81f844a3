"""The cost model's parameters: one table, presets, TOML and key=value overrides.

Every field is documented here and in docs/simulation.md, which gives the
public source of each default or says that it is assumed. Times are in
microseconds (``_us``) or nanoseconds (``_ns``); bandwidths in GB/s
(10**9 bytes per second).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

#: Interconnect presets: (bandwidth GB/s per direction, link latency us).
#: PCIe: 8/16/32 GT/s per lane with 128b/130b encoding, x16 (PCI-SIG base
#: specifications 3.0/4.0/5.0): 15.75, 31.5, 63.0 GB/s per direction.
#: NVLink-C2C: 900 GB/s total, 450 GB/s per direction (NVIDIA Grace Hopper
#: superchip architecture whitepaper). Latencies are assumed.
INTERCONNECTS: dict[str, tuple[float, float]] = {
    "pcie3": (15.75, 1.0),
    "pcie4": (31.5, 1.0),
    "pcie5": (63.0, 1.0),
    "nvlink-c2c": (450.0, 0.5),
}


class ParamError(ValueError):
    """A bad parameter name or value (the CLI prints it on one line)."""


@dataclass
class SimParams:
    """The cost-model table (docs/simulation.md, "Parameters").

    interconnect: preset name (INTERCONNECTS); sets bandwidth_gbps and
        link_latency_us unless those are given.
    bandwidth_gbps: host<->device copy bandwidth, GB/s per direction.
    link_latency_us: fixed cost of one DMA copy (one migrate window).
    link_efficiency: fraction of bandwidth_gbps a copy achieves.
    fault_batch: faults fetched and serviced per batch (NVIDIA 256).
    gpu_fault_latency_us: fixed cost of one fault batch: interrupt, buffer
        fetch, replay (far-fault latency, "tens of us").
    per_fault_us: per unique fault entry (lookup, policy, dedup).
    per_page_kernel_us: per migrated page, kernel work of migrate_vma_* /
        migrate_device_* (collect, unmap, copy setup, remove_migration_ptes).
    map_per_page_us: per device page-table entry written.
    eviction_chunk_us: fixed cost of evicting one root chunk.
    cpu_fault_us: a CPU fault that reaches migrate_to_ram (trap, do_swap_page,
        driver call), besides the copy.
    cpu_minor_fault_us: any other CPU page fault (first touch).
    gpu_access_ns: device compute per access to device memory.
    remote_access_ns: device access to a system page over the link.
    cpu_access_ns: CPU compute per access.
    ac_service_us: fixed cost of servicing access counter notifications
      (interrupt, notification buffer fetch, counter clear), per service.
    ac_batch: access counter notifications fetched and serviced per batch
      (NVIDIA uvm_perf_access_counter_batch_count, 256); the engine services
      the buffer when it holds a batch, with every fault batch and when the
      CPU waits for the device (1: after each access that raised one).
    """

    interconnect: str = "pcie4"
    bandwidth_gbps: float | None = None
    link_latency_us: float | None = None
    link_efficiency: float = 1.0
    fault_batch: int = 256
    gpu_fault_latency_us: float = 20.0
    per_fault_us: float = 0.5
    per_page_kernel_us: float = 0.3
    map_per_page_us: float = 0.05
    eviction_chunk_us: float = 10.0
    cpu_fault_us: float = 5.0
    cpu_minor_fault_us: float = 1.0
    gpu_access_ns: float = 2.0
    remote_access_ns: float = 1000.0
    cpu_access_ns: float = 5.0
    ac_service_us: float = 20.0
    ac_batch: int = 256

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.interconnect not in INTERCONNECTS:
            raise ParamError(
                f"interconnect {self.interconnect!r}: choose one of {', '.join(INTERCONNECTS)}"
            )
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "interconnect" or v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ParamError(f"{f.name} must be a number, not {v!r}")
            if v < 0:
                raise ParamError(f"{f.name} must not be negative ({v})")
        for name in ("fault_batch", "ac_batch"):
            v = getattr(self, name)
            if v < 1 or int(v) != v:
                raise ParamError(f"{name} must be a positive integer ({v})")
        if not 0 < self.link_efficiency <= 1:
            raise ParamError(f"link_efficiency must be in (0, 1] ({self.link_efficiency})")
        if self.bandwidth_gbps is not None and self.bandwidth_gbps <= 0:
            raise ParamError(f"bandwidth_gbps must be positive ({self.bandwidth_gbps})")

    # --- derived -------------------------------------------------------------------------
    @property
    def bandwidth(self) -> float:
        """Effective copy bandwidth, bytes per microsecond."""
        gbps = self.bandwidth_gbps
        if gbps is None:
            gbps = INTERCONNECTS[self.interconnect][0]
        return gbps * 1e3 * self.link_efficiency  # GB/s = 1e9 B/s = 1e3 B/us

    @property
    def latency_us(self) -> float:
        if self.link_latency_us is not None:
            return self.link_latency_us
        return INTERCONNECTS[self.interconnect][1]

    def copy_us(self, nbytes: int, copies: int = 1) -> float:
        """Time to move nbytes in `copies` DMA operations."""
        if nbytes <= 0:
            return 0.0
        return copies * self.latency_us + nbytes / self.bandwidth

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- overrides --------------------------------------------------------------------------
    def replace(self, **changes) -> SimParams:
        names = {f.name for f in fields(self)}
        for key in changes:
            if key not in names:
                raise ParamError(f"unknown parameter {key!r} (known: {', '.join(sorted(names))})")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, pairs: list[str] | tuple[str, ...]) -> SimParams:
        """Apply KEY=VALUE strings (the CLI's --set)."""
        changes = {}
        types = {f.name: f.type for f in fields(self)}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise ParamError(f"--set {pair!r}: expected KEY=VALUE")
            if key not in types:
                raise ParamError(f"unknown parameter {key!r} (known: {', '.join(sorted(types))})")
            changes[key] = _convert(key, types[key], value.strip())
        return self.replace(**changes)


def _convert(key: str, typ, value: str):
    t = str(typ)
    if t == "str":
        return value
    try:
        if t == "int":
            return int(value, 0)
        if value.lower() == "none" and "None" in t:
            return None
        return float(value)
    except ValueError:
        raise ParamError(f"{key}: {value!r} is not a number") from None


def load_toml(path: str, base: SimParams | None = None) -> SimParams:
    """Parameters from a TOML file: top-level keys, or a [params] table."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ParamError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ParamError(f"{path}: not valid TOML ({e})") from None
    if "params" in data and isinstance(data["params"], dict):
        data = data["params"]
    base = base or SimParams()
    try:
        return base.replace(**data)
    except TypeError as e:
        raise ParamError(f"{path}: {e}") from None
