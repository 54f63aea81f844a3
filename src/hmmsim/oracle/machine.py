"""Build the oracle kernel and runner, boot them under QEMU, record goldens.

Everything here shells out (apt-get, tar, make, gcc, qemu-system-x86_64);
the text processing lives in hmmsim.oracle.golden and the initramfs in
hmmsim.oracle.initramfs. See docs/oracle.md.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hmmsim.oracle import golden, initramfs

HERE = Path(__file__).resolve().parent
RUNNER_C = HERE / "runner.c"
KERNEL_CONFIG = HERE / "kernel.config"
SOURCE_NAME = "linux-source-6.12"
SOURCE_TARBALL = Path("/usr/src") / f"{SOURCE_NAME}.tar.xz"
PACKAGES = (
    "linux-source-6.12",
    "qemu-system-x86",
    "busybox-static",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "gcc",
    "make",
)
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"


class OracleError(RuntimeError):
    """A build or boot step failed (the message says which and where the log is)."""


def default_workdir() -> Path:
    return Path(os.environ.get("HMMSIM_ORACLE_DIR", "~/.cache/hmmsim-oracle")).expanduser()


@dataclass(frozen=True)
class Paths:
    workdir: Path

    @property
    def src(self) -> Path:
        return self.workdir / SOURCE_NAME

    @property
    def bzimage(self) -> Path:
        return self.src / "arch/x86/boot/bzImage"

    @property
    def runner(self) -> Path:
        return self.workdir / "runner"

    @property
    def config_stamp(self) -> Path:
        return self.workdir / "kernel.config.applied"

    @property
    def build_log(self) -> Path:
        return self.workdir / "build.log"

    @property
    def console(self) -> Path:
        return self.workdir / "console"


Log = Callable[[str], None]


def _run(cmd: list[str], log: Log, cwd: Path | None = None, logfile: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    if logfile is not None:
        with open(logfile, "ab") as f:
            r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode:
            raise OracleError(f"{' '.join(cmd)} failed (rc={r.returncode}); see {logfile}")
        return
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise OracleError(f"{' '.join(cmd)} failed (rc={r.returncode}): {r.stderr.strip()[-2000:]}")


def missing_packages() -> list[str]:
    out = []
    for pkg in PACKAGES:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if r.returncode or "install ok installed" not in r.stdout:
            out.append(pkg)
    return out


def ensure_packages(log: Log) -> None:
    if shutil.which("dpkg-query") is None:
        log("not a Debian system: install the packages by hand: " + " ".join(PACKAGES))
        return
    missing = missing_packages()
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("installing " + " ".join(missing))
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise OracleError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-2000:]}")


def unpack(paths: Paths, log: Log) -> None:
    if (paths.src / "Makefile").exists():
        return
    if not SOURCE_TARBALL.exists():
        raise OracleError(f"{SOURCE_TARBALL} missing: apt-get install linux-source-6.12")
    paths.workdir.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-xaf", str(SOURCE_TARBALL), "-C", str(paths.workdir)], log)


def config_delta() -> list[str]:
    """The kernel.config lines that set something (CONFIG_X=y/n/value)."""
    return [
        ln.strip()
        for ln in KERNEL_CONFIG.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]


def check_config(config_text: str) -> list[str]:
    """The delta lines the final .config does not honour (n means 'is not set')."""
    have = {}
    for ln in config_text.splitlines():
        if ln.startswith("CONFIG_"):
            k, _, v = ln.partition("=")
            have[k] = v
        elif ln.startswith("# CONFIG_") and ln.endswith(" is not set"):
            have[ln[2:].split()[0]] = "n"
    bad = []
    for ln in config_delta():
        k, _, v = ln.partition("=")
        if have.get(k, "n") != v:
            bad.append(f"{ln} (got {have.get(k, 'n')})")
    return bad


def configure(paths: Paths, log: Log) -> None:
    delta = KERNEL_CONFIG.read_text()
    cfg = paths.src / ".config"
    if cfg.exists() and paths.config_stamp.exists() and paths.config_stamp.read_text() == delta:
        return
    lf = paths.build_log
    _run(["make", "tinyconfig"], log, cwd=paths.src, logfile=lf)
    _run(
        ["scripts/kconfig/merge_config.sh", "-m", ".config", str(KERNEL_CONFIG)],
        log,
        cwd=paths.src,
        logfile=lf,
    )
    _run(["make", "olddefconfig"], log, cwd=paths.src, logfile=lf)
    bad = check_config(cfg.read_text())
    if bad:
        log("warning: kernel.config lines not honoured: " + "; ".join(bad))
    paths.config_stamp.write_text(delta)


def make_kernel(paths: Paths, jobs: int, log: Log) -> float:
    t0 = time.monotonic()
    _run(["make", f"-j{jobs}", "bzImage"], log, cwd=paths.src, logfile=paths.build_log)
    return time.monotonic() - t0


def compile_runner(paths: Paths, log: Log) -> None:
    paths.workdir.mkdir(parents=True, exist_ok=True)
    _run(["gcc", "-static", "-O2", "-Wall", "-o", str(paths.runner), str(RUNNER_C)], log)


def build(workdir: Path, jobs: int, log: Log, apt: bool = True) -> dict:
    """From a fresh machine: packages, source, config, bzImage, runner."""
    paths = Paths(workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    if apt:
        ensure_packages(log)
    t0 = time.monotonic()
    unpack(paths, log)
    timings["unpack_s"] = round(time.monotonic() - t0, 1)
    configure(paths, log)
    timings["make_s"] = round(make_kernel(paths, jobs, log), 1)
    compile_runner(paths, log)
    return timings


def ensure_built(paths: Paths, log: Log) -> None:
    """The kernel must exist; the runner is (re)compiled when runner.c is newer."""
    if not paths.bzimage.exists():
        raise OracleError(
            f"no kernel at {paths.bzimage}: run `hmmsim oracle build --workdir {paths.workdir}`"
        )
    if not paths.runner.exists() or paths.runner.stat().st_mtime < RUNNER_C.stat().st_mtime:
        compile_runner(paths, log)


# --- booting ------------------------------------------------------------------------------------


def qemu_command(paths: Paths, initrd: Path, start: int, memory: str = "2G") -> list[str]:
    return [
        QEMU,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-smp",
        "1",
        "-m",
        memory,
        "-kernel",
        str(paths.bzimage),
        "-initrd",
        str(initrd),
        "-append",
        f"{initramfs.CMDLINE} hmmsim.start={start}",
    ]


@dataclass
class BootResult:
    transcript: str
    ended: str  # done | reboot | exit | timeout
    current: int | None  # a BEGIN without END when it ended
    last_end: int | None
    info: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ready: bool = False


def boot_once(
    paths: Paths,
    initrd: Path,
    start: int,
    boot_timeout: float,
    scenario_timeout: float,
    oops_settle: float = 5.0,
) -> BootResult:
    """Boot the guest once, running scenarios from `start` until done, a reboot or a hang."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        qemu_command(paths, initrd, start),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    pending = b""
    deadline = time.monotonic() + boot_timeout
    current: int | None = None
    last_end: int | None = None
    ended = "exit"
    ready = False
    info: list[str] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "timeout"
                break
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not r:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if current is not None and line.startswith("---[ end trace"):
                    # an oops ended: a run that is still alive after this
                    # settle time hung in its exit (e.g. on a mutex it held)
                    deadline = min(deadline, time.monotonic() + oops_settle)
                if not line.startswith(golden.MARK + " "):
                    continue
                parts = line.split()
                what = parts[1] if len(parts) > 1 else ""
                if what == "READY":
                    ready = True
                elif what == "BEGIN":
                    current = int(parts[2])
                elif what == "END":
                    current, last_end = None, int(parts[2])
                elif what == "INFO":
                    info.append(" ".join(parts[2:]))
                elif what == "DONE":
                    ended = "done"
                elif what == "REBOOT":
                    ended = "reboot"
                if what in ("READY", "BEGIN", "END"):
                    deadline = time.monotonic() + scenario_timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    text = b"".join(chunks).decode("utf-8", "replace")
    return BootResult(text, ended, current, last_end, info, time.monotonic() - t0, ready)


@dataclass
class Recording:
    runs: dict[int, golden.Run]
    boots: int
    seconds: float
    info: list[str]


def record_texts(
    paths: Paths,
    scenarios: list[bytes],
    log: Log,
    boot_timeout: float = 120.0,
    scenario_timeout: float = 60.0,
) -> Recording:
    """Run the scenarios in the guest (rebooting after a taint or a hang)."""
    ensure_built(paths, log)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    # one initrd per recording: two may share a work directory
    initrd = paths.workdir / f"initrd-{os.getpid()}.gz"
    initrd.write_bytes(initramfs.build(BUSYBOX.read_bytes(), paths.runner.read_bytes(), scenarios))
    try:
        return _record(paths, initrd, len(scenarios), log, boot_timeout, scenario_timeout)
    finally:
        initrd.unlink(missing_ok=True)


def _record(
    paths: Paths, initrd: Path, n: int, log: Log, boot_timeout: float, scenario_timeout: float
) -> Recording:
    runs: dict[int, golden.Run] = {}
    start, boots, retries, t0 = 0, 0, 0, time.monotonic()
    info: list[str] = []
    transcripts = []
    while start < n:
        res = boot_once(paths, initrd, start, boot_timeout, scenario_timeout)
        boots += 1
        if res.info and not info and "devices 4" not in res.info:
            log("warning: the guest does not have /dev/hmm_dmirror0..3: " + "; ".join(res.info))
        info = info or res.info
        transcripts.append(res.transcript)
        got = golden.parse_transcript(res.transcript)
        for i, run in got.items():
            if run.complete:
                runs[i] = run
        if res.current is not None:
            run = got.get(res.current) or golden.Run(res.current)
            run.status = "hung" if res.ended == "timeout" else "crashed"
            runs[res.current] = run
            log(f"scenario {res.current}: {run.status} (boot {boots})")
            start = res.current + 1
        elif res.ended == "done":
            break
        elif res.last_end is not None and res.last_end + 1 > start:
            start = res.last_end + 1
        elif res.ready and res.ended != "timeout":
            # died between two scenarios: blame the next one
            runs[start] = golden.Run(start, status="crashed")
            log(f"scenario {start}: crashed before it began (boot {boots})")
            start += 1
        else:
            # never reached /init's READY (e.g. a TCG timer-check flake on a
            # loaded host): boot again, a few times
            retries += 1
            log(f"boot {boots} failed before READY ({res.ended}); retrying")
            if retries > 3:
                paths.console.write_text("".join(transcripts))
                raise OracleError(
                    f"the guest does not boot ({res.ended}); console in {paths.console}"
                )
            continue
        retries = 0
    paths.console.write_text("".join(transcripts))
    return Recording(runs, boots, time.monotonic() - t0, info)


def scenario_files(args: list[str]) -> list[Path]:
    """Files and directories (their *.scn, sorted) -> scenario paths."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(p.glob("*.scn"))
        elif p.exists():
            out.append(p)
        else:
            raise OracleError(f"{a}: no such file or directory")
    return out


def golden_paths(scn: Path, out_dir: Path | None) -> tuple[Path, Path]:
    d = out_dir if out_dir is not None else scn.parent
    return d / (scn.stem + ".golden"), d / (scn.stem + ".log")


def write_goldens(
    files: list[Path], rec: Recording, out_dir: Path | None, log: Log
) -> list[tuple[Path, str]]:
    """NAME.golden and NAME.log for every recorded run; (file, problem) for the others."""
    problems = []
    for i, scn in enumerate(files):
        run = rec.runs.get(i)
        if run is None:
            problems.append((scn, "no run recorded"))
            continue
        if run.rc == 2 and not run.out:
            problems.append((scn, "runner rejected it: " + " ".join(run.stderr)))
            continue
        g, lg = golden_paths(scn, out_dir)
        g.parent.mkdir(parents=True, exist_ok=True)
        lines = golden.golden_lines(run)
        g.write_text("".join(ln + "\n" for ln in lines))
        lg.write_text("".join(ln + "\n" for ln in run.log))
        oops = [ln[2:] for ln in lines if ln.startswith("! OOPS")]
        if run.status != "ok":
            problems.append((scn, f"{oops[0]}, then {run.status}" if oops else run.status))
        elif oops:
            problems.append((scn, oops[0]))
    return problems
