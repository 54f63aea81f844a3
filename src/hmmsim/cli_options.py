"""Options and error handling shared by every `hmmsim` command.

- `--feature` takes seed-series letters one at a time or comma-separated
  (`--feature a,b,c`), in every command; `no-d` switches off series (d),
  which is merged at the pin and otherwise always on.
- `--conflict-resolution` picks how series (c) and (e) share their HMM_PFN
  bit; every command that builds a kernel takes it, and needs it when both
  are on.
- Sizes a user asks for (--ram, --size) are checked against the host's
  available memory before anything is allocated (`check_host_memory`).
- `guarded_main` turns what a user can cause into one line on stderr and an
  exit status, never a traceback: 2 for a usage error (including a size the
  host cannot hold), 3 when the host runs out of memory during a run, 130
  on Ctrl-C (commands that keep partial results print and save them first,
  then raise `Interrupted`); 1 stays "the run found a failure" (and a write
  the host refuses, like click's FileError).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

import click

from hmmsim.kconfig import SERIES, SERIES_ABSENT, ConfigError, KConfig

#: The values of KConfig.pvmw_form (series (c)).
PVMW_FORMS = ("flag", "pfn-bit")

#: How (c) and (e) share their HMM_PFN bit (see hmmsim.include.hmm).
RESOLUTIONS = ("c-first", "e-first")

#: Exit statuses of the commands (besides 0, and 1 for "found a failure").
EXIT_USAGE = 2
EXIT_HOST_MEMORY = 3
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """Raised by a command that handled Ctrl-C itself (printed and saved what
    it had); `guarded_main` exits 130."""


class Features(tuple):
    """The series letters switched on by --feature, in order (a plain tuple
    of letters to code that only reads them), and `.off`: those switched off
    with `no-X` (only `no-d` changes anything: (d) is on unless removed)."""

    off: frozenset

    def __new__(cls, on: Iterable[str] = (), off: Iterable[str] = ()):
        t = super().__new__(cls, tuple(on))
        t.off = frozenset(off)
        return t


class SeriesList(click.ParamType):
    """One --feature value: a letter, `no-<letter>`, or a comma-separated list."""

    name = "series"

    def get_metavar(self, param, ctx=None) -> str:
        return "[a|b|c|d|e|no-d][,...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = [s.strip().lower() for s in str(value).split(",")]
        out = []
        for it in items:
            letter = it[3:] if it.startswith("no-") else it
            if letter not in SERIES:
                self.fail(
                    f"{it!r} is not a seed series: give letters from "
                    f"{', '.join(sorted(SERIES))} (repeat --feature or separate them with "
                    "commas; no-d switches the merged series d off)",
                    param,
                    ctx,
                )
            out.append(it)
        return tuple(out)


def _flatten(_ctx, _param, values) -> Features:
    """All --feature values in order; a later `no-x` undoes an earlier x and
    the other way round."""
    on: list[str] = []
    off: set[str] = set()
    for group in values or ():
        for it in group:
            if it.startswith("no-"):
                letter = it[3:]
                off.add(letter)
                if letter in on:
                    on.remove(letter)
            else:
                off.discard(it)
                if it not in on:
                    on.append(it)
    return Features(on, off)


def feature_option(help_text: str | None = None):
    """--feature: repeatable, comma lists allowed; the value is a `Features`."""
    return click.option(
        "--feature",
        "features",
        multiple=True,
        type=SeriesList(),
        callback=_flatten,
        help=help_text
        or (
            "Enable seed series (repeatable, or comma-separated: --feature a,b,c; "
            "no-d switches the merged series d off): "
            + "; ".join(f"{k}: {v}" for k, v in SERIES.items())
        ),
    )


_conflict_resolution_option = click.option(
    "--conflict-resolution",
    "conflict_resolution",
    type=click.Choice(RESOLUTIONS),
    default=None,
    help="How series (c) and (e) share HMM_PFN bit BITS_PER_LONG-7: required when both are "
    "on, ignored otherwise.",
)


def _remember_pvmw_form(ctx, _param, value):
    if value is not None:
        ctx.meta["hmmsim.pvmw_form"] = value
    return value


_pvmw_form_option = click.option(
    "--pvmw-form",
    type=click.Choice(PVMW_FORMS),
    default=None,
    expose_value=False,
    callback=_remember_pvmw_form,
    help="Series (c): how page_vma_mapped_walk marks a device-private offset: flag "
    "(PVMW_DEVICE_PRIVATE in pvmw->flags, v3 and later; the default) or pfn-bit "
    "(pvmw->pfn shifted left by one with PVMW_PFN_DEVICE_PRIVATE in bit 0, v1/v2).",
)


#: The KConfig.data_plane values (hmmsim.data_plane.DATA_PLANES; spelled
#: out here so that building the CLI does not import NumPy).
DATA_PLANES = ("bytes", "tokens")


def data_plane_option(help_text: str | None = None):
    """--data-plane bytes|tokens: KConfig.data_plane (hmmsim.data_plane)."""
    return click.option(
        "--data-plane",
        type=click.Choice(DATA_PLANES),
        default="bytes",
        show_default=True,
        help=help_text
        or "Page contents: 4096 bytes per page, or one 64-bit token per page (stores keep to "
        "a page's first 8 bytes; hmmsim.data_plane).",
    )


def conflict_option(f):
    """--conflict-resolution and --pvmw-form: the sub-switches of the seed
    series, on every command that builds a kernel. build_config reads
    --pvmw-form from the click context, so commands need not pass it on."""
    return _conflict_resolution_option(_pvmw_form_option(f))


def series_set(features: Iterable[str], kernel: str = "mainline") -> frozenset:
    """The enabled series of a command: (d), merged at the pin, unless the
    profile lacks it or --feature no-d; plus `features`. A series the profile
    lacks is a usage error."""
    absent = set(SERIES_ABSENT.get(kernel, ()))
    asked = sorted(set(features) & absent)
    if asked:
        raise click.UsageError(
            f"series {', '.join(asked)} did not exist in Linux {kernel}: "
            f"drop --feature {','.join(asked)} or --kernel {kernel}"
        )
    off = set(getattr(features, "off", ()))
    return frozenset(({"d"} - absent - off) | set(features))


def resolution_for(fs: Iterable[str], conflict_resolution: str | None) -> str | None:
    """The conflict resolution a kernel with series `fs` gets: required with
    both (c) and (e), dropped otherwise."""
    if {"c", "e"} <= set(fs):
        if conflict_resolution is None:
            raise click.UsageError(
                "series (c) and (e) both claim HMM_PFN bit BITS_PER_LONG-7: "
                "pass --conflict-resolution c-first or e-first"
            )
        return conflict_resolution
    return None


def build_config(
    features: Iterable[str],
    kernel: str = "mainline",
    conflict_resolution: str | None = None,
    **fields,
) -> KConfig:
    """The KConfig of a command (see `series_set`); any ConfigError is a usage error."""
    fs = series_set(features, kernel)
    cr = resolution_for(fs, conflict_resolution)
    ctx = click.get_current_context(silent=True)
    form = ctx.find_root().meta.get("hmmsim.pvmw_form") if ctx is not None else None
    if form is not None and "pvmw_form" not in fields:
        if "c" not in fs:
            raise click.UsageError("--pvmw-form needs series (c): add --feature c")
        fields["pvmw_form"] = form
    try:
        return KConfig(features=fs, conflict_resolution=cr, kernel=kernel, **fields)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def config_json(cfg: KConfig) -> dict:
    """A KConfig as `--json` outputs show it."""
    return {
        "kernel": cfg.kernel,
        "features": "".join(sorted(cfg.features)),
        "conflict_resolution": cfg.conflict_resolution,
        "pvmw_form": cfg.pvmw_form if "c" in cfg.features else None,
        "ram_bytes": cfg.ram_bytes,
        "hugetlb_pages": cfg.hugetlb_pages,
        "bugs": sorted(cfg.bugs),
    }


# --- host memory -----------------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _cgroup_room() -> int | None:
    """What the cgroup v2 limit still allows, if there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def host_memory_available() -> int | None:
    """Bytes this process can still get from the host: MemAvailable plus free
    swap (/proc/meminfo), else the free physical pages (sysconf), bounded by a
    cgroup v2 limit; None if the host does not say."""
    avail = None
    try:
        mi = _meminfo()
        if "MemAvailable" in mi:
            avail = mi["MemAvailable"] + mi.get("SwapFree", 0)
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    room = _cgroup_room()
    return avail if room is None else min(avail, room)


def page_host_bytes(data_plane: str = "bytes") -> int:
    """Host bytes one modelled 4 KiB page may come to use: its contents
    (4096 bytes, or one 8-byte token with the token data plane,
    hmmsim.data_plane) and its struct page arrays."""
    from hmmsim.data_plane import TOKEN_BYTES
    from hmmsim.include.mm_types import STRUCT_PAGE_BYTES
    from hmmsim.kconfig import PAGE_SIZE

    return (TOKEN_BYTES if data_plane == "tokens" else PAGE_SIZE) + STRUCT_PAGE_BYTES


def kernel_host_bytes(ram_bytes: int, data_plane: str = "bytes") -> int:
    """Host memory a Kernel with `ram_bytes` of modelled RAM may come to use:
    the frames (or tokens) themselves (allocated lazily, but a run can touch
    all of them) and the per-page metadata arrays."""
    return (ram_bytes >> 12) * page_host_bytes(data_plane)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_host_memory(need: int, what: str) -> None:
    """A usage error, before anything is allocated, if `need` bytes of host
    memory (for `what`, e.g. "--ram 64G") are more than the host has."""
    avail = host_memory_available()
    if avail is not None and need > avail:
        raise click.UsageError(
            f"{what} needs about {_gib(need)} of host memory, but this machine has "
            f"{_gib(avail)} available: choose a smaller size"
        )


# --- running a command -------------------------------------------------------------------------
def guarded_main(prefix: str, call: Callable[[], object]):
    """Run click's main (`call`, in non-standalone mode) and turn what a user
    can cause into one line and an exit status (see the module docstring)."""
    try:
        return call()
    except click.ClickException as e:
        click.echo(f"{prefix}: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
            click.echo(f"{prefix}: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        click.echo(f"{prefix}: aborted", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, Interrupted):
        click.echo(f"{prefix}: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MemoryError as e:
        why = str(e) or "MemoryError"
        click.echo(
            f"{prefix}: error: the host ran out of memory ({why}); "
            "try a smaller --ram or --size, or fewer steps",
            err=True,
        )
        sys.exit(EXIT_HOST_MEMORY)
    except OSError as e:
        # the host refused a write (disk full, permissions, a closed pipe):
        # like click's FileError, one line and exit 1
        try:
            click.echo(f"{prefix}: error: {e}", err=True)
        except OSError:
            pass
        sys.exit(1)


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
