"""The pinned kernel, its geometry, and the seed-series switches.

Models: the Kconfig of an x86-64 kernel with CONFIG_ZONE_DEVICE,
CONFIG_DEVICE_PRIVATE, CONFIG_MIGRATION, CONFIG_MEMORY_FAILURE,
CONFIG_PTE_MARKER_UFFD_WP, CONFIG_TRANSPARENT_HUGEPAGE and
CONFIG_ARCH_ENABLE_THP_MIGRATION all on, at torvalds/linux @ 0eaed89c18ae.

Every model module names this commit in its docstring. The five seed series
(a)-(e) are switches on top of it, off by default, like Kconfig options; a
`KConfig` is immutable and checked when it is built, so an impossible
combination never reaches a `Kernel`.

`KConfig.kernel` picks a profile: "mainline" (the pin) or "6.12" (Linux
6.12.117, the one real kernel the project can boot). The 6.12 profile
switches the behaviours that differ between the two in what the dmirror
scenarios exercise; docs/kernel-versions.md lists every difference found,
its source in both trees, and whether the profile models it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: The upstream commit every name, bit and errno in hmmsim follows.
KERNEL_COMMIT = "0eaed89c18aeedf0898baf2dbf5ff027c6795152"
KERNEL_TREE = "torvalds/linux"
#: Human name of the pin (mainline during the v7.3 release candidates).
KERNEL_TAG = "v7.3-rc (mainline 0eaed89c18ae)"

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)
PMD_SHIFT = 21
PMD_SIZE = 1 << PMD_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
PUD_SHIFT = 30
PUD_SIZE = 1 << PUD_SHIFT
PGDIR_SHIFT = 39
PTRS_PER_PTE = PTRS_PER_PMD = PTRS_PER_PUD = PTRS_PER_PGD = 512
HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
HPAGE_PMD_SIZE = PMD_SIZE
#: x86-64 with 4-level paging.
MAX_PHYSMEM_BITS = 46
#: Page indices of series (c) device-private pages start here: above every
#: possible physical PFN, so one can never be mistaken for the other.
DEVICE_PRIVATE_BASE = 1 << (MAX_PHYSMEM_BITS - PAGE_SHIFT)
#: Userspace ends below the canonical hole (x86-64 TASK_SIZE_MAX, 4-level).
TASK_SIZE = (1 << 47) - PAGE_SIZE
#: Linux's default mmap_min_addr.
MMAP_MIN_ADDR = 0x10000

#: The five seed series, by the letter the reference uses.
SERIES = {
    "a": "MIGRATE_PFN_DEVICE_PRIVATE: a migrate-PFN flag for device-private pages",
    "b": "SWP_MIGRATION_DEVICE_*: separate migration-entry types for device-private pages",
    "c": "device-private address space outside physical memory",
    "d": "THP (compound) migration of device pages (merged upstream: on at the pin)",
    "e": "unified HMM/migrate_device page walk (HMM_PFN_REQ_MIGRATE)",
}

#: (c) is built on (a) and (b) in the real series.
SERIES_REQUIRES = {"c": ("a", "b")}

#: Kernel profiles: the pin, and the Linux 6.12 the oracle boots.
KERNELS = {
    "mainline": f"{KERNEL_TREE} @ {KERNEL_COMMIT[:12]} (v7.3-rc)",
    "6.12": "Linux 6.12.117 (Debian linux-source-6.12); see docs/kernel-versions.md",
}
#: Series that were merged upstream after a profile's release: they cannot be
#: switched on for it. (d), THP migration of device pages, is not in 6.12.
SERIES_ABSENT = {"6.12": ("d",)}


class ConfigError(ValueError):
    """A KConfig that the real series could not build."""


@dataclass(frozen=True)
class KConfig:
    """Configuration of one modelled kernel.

    Fields:
        kernel: "mainline" (the pin, default) or "6.12" (the behaviours of
            Linux 6.12 where they differ; docs/kernel-versions.md).
        features: enabled seed series letters; "d" is merged at the pin, so it
            is on unless removed explicitly (None, the default, means {"d"}).
            A series in SERIES_ABSENT[kernel] is dropped: (d) did not exist in
            6.12, so `replace(cfg, kernel="6.12")` of a mainline config with
            (d) is the 6.12 profile without it (the CLI refuses --feature d
            with --kernel 6.12 instead).
        bits_per_long: 64 (x86-64) or 32, for the HMM/migrate PFN budgets.
        ram_bytes: size of modelled system RAM.
        hugetlb_pages: PMD-sized pages in the hugetlb pool (HugeTLB default
            size 2 MiB on x86-64).
        phys_addr_bits: size of the physical address space (iomem_resource)
            that legacy device-private pgmaps are carved from; at most
            MAX_PHYSMEM_BITS.
        conflict_resolution: how to resolve the (c)/(e) HMM_PFN bit clash
            when both are enabled; see `hmmsim.include.hmm`.
        pvmw_form: series (c)'s marker of a device-private page walk:
            "flag" (v3+, PVMW_DEVICE_PRIVATE in pvmw->flags, the default) or
            "pfn-bit" (v1/v2, pvmw->pfn shifted left by one with
            PVMW_PFN_DEVICE_PRIVATE in bit 0); see `hmmsim.include.rmap`.
            Only series (c) reads it.
        bugs: known kernel bugs to put back (names from `hmmsim.mutants`);
            empty for the fixed kernel.
        data_plane: how page contents are stored: "bytes" (4096 real bytes
            per page, the default) or "tokens" (one u64 token per page: its
            bytes are the token, little-endian, then 4088 zeros; a store that
            would make another byte non-zero raises TokenPlaneError). Not a
            kernel option: a host-memory choice (hmmsim.data_plane).

    Invariant: every series in SERIES_REQUIRES has its prerequisites enabled.
    """

    features: frozenset[str] | None = None
    bits_per_long: int = 64
    ram_bytes: int = 256 << 20
    hugetlb_pages: int = 4
    phys_addr_bits: int = MAX_PHYSMEM_BITS
    conflict_resolution: str | None = None
    bugs: frozenset[str] = frozenset()
    kernel: str = "mainline"
    pvmw_form: str = "flag"
    data_plane: str = "bytes"

    def __post_init__(self) -> None:
        from hmmsim.mutants import check_bugs

        if self.kernel not in KERNELS:
            raise ConfigError(
                f"unknown kernel profile {self.kernel!r}: choose from {sorted(KERNELS)}"
            )
        absent = set(SERIES_ABSENT.get(self.kernel, ()))
        if self.features is None:
            object.__setattr__(self, "features", frozenset({"d"} - absent))
        else:
            object.__setattr__(self, "features", frozenset(self.features) - absent)

        try:
            object.__setattr__(self, "bugs", check_bugs(self.bugs))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        unknown = set(self.features) - set(SERIES)
        if unknown:
            raise ConfigError(
                f"unknown seed series {sorted(unknown)}: choose from {sorted(SERIES)}"
            )
        for s, needs in SERIES_REQUIRES.items():
            if s in self.features:
                missing = [n for n in needs if n not in self.features]
                if missing:
                    raise ConfigError(
                        f"series ({s}) needs series {', '.join(f'({m})' for m in missing)}: "
                        "the device-private address space is built on the "
                        "MIGRATE_PFN_DEVICE_PRIVATE flag (a) and the device migration "
                        "entry types (b); enable them too"
                    )
        if self.pvmw_form not in ("flag", "pfn-bit"):
            raise ConfigError(
                f"pvmw_form must be 'flag' (series (c) v3+) or 'pfn-bit' (v1/v2), "
                f"not {self.pvmw_form!r}"
            )
        if self.data_plane not in ("bytes", "tokens"):
            raise ConfigError(f"data_plane must be 'bytes' or 'tokens', not {self.data_plane!r}")
        if self.bits_per_long not in (32, 64):
            raise ConfigError("bits_per_long must be 32 or 64")
        if self.ram_bytes < 16 * PMD_SIZE or self.ram_bytes % PMD_SIZE:
            raise ConfigError(
                f"ram_bytes must be a multiple of {PMD_SIZE} and at least {16 * PMD_SIZE}"
            )
        if (
            not 20 <= self.phys_addr_bits <= MAX_PHYSMEM_BITS
            or (1 << self.phys_addr_bits) <= self.ram_bytes
        ):
            raise ConfigError(
                f"phys_addr_bits must be in 20..{MAX_PHYSMEM_BITS} and leave room above RAM"
            )
        if self.hugetlb_pages < 0:
            raise ConfigError("hugetlb_pages must be >= 0")
        if {"c", "e"} <= set(self.features) and self.conflict_resolution not in (
            "c-first",
            "e-first",
        ):
            raise ConfigError(
                "series (c) and (e) both claim HMM_PFN bit BITS_PER_LONG-7 "
                f"(bit {self.bits_per_long - 7}: HMM_PFN_DEVICE_PRIVATE vs HMM_PFN_MIGRATE) "
                "and both move HMM_PFN_ORDER_SHIFT; pick conflict_resolution='c-first' "
                "or 'e-first' (see hmmsim.include.hmm)"
            )

    def has(self, series: str) -> bool:
        """True if seed series `series` ("a".."e") is enabled."""
        return series in self.features

    def with_features(self, *letters: str) -> KConfig:
        """A copy with `letters` enabled in addition to the current ones."""
        return replace(self, features=frozenset(self.features) | set(letters))

    @property
    def nr_ram_pages(self) -> int:
        return self.ram_bytes >> PAGE_SHIFT

    def __repr__(self) -> str:
        f = "".join(sorted(self.features)) or "-"
        tree = KERNEL_COMMIT[:12] if self.kernel == "mainline" else f"linux-{self.kernel}"
        return (
            f"<KConfig {tree} series={f} BITS_PER_LONG={self.bits_per_long} "
            f"ram={self.ram_bytes >> 20}MiB"
            + (
                f" pvmw={self.pvmw_form}"
                if "c" in self.features and self.pvmw_form != "flag"
                else ""
            )
            + (f" bugs={','.join(sorted(self.bugs))}" if self.bugs else "")
            + (" data=tokens" if self.data_plane == "tokens" else "")
            + ">"
        )


DEFAULT = KConfig()
