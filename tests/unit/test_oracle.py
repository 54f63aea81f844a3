"""hmmsim.oracle: the pure-Python parts (no QEMU), and runner.c where gcc exists.

The console transcripts and kernel logs below are written in the format the
guest's /init and the 6.12 kernel print (docs/oracle.md).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hmmsim.oracle import golden, initramfs, machine

RUNNER_C = Path(machine.__file__).with_name("runner.c")

OOPS_LOG = """\
BUG: unable to handle page fault for address: ffffea0001000008
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
PGD 0 P4D 0
Oops: Oops: 0000 [#1] NOPTI
CPU: 0 UID: 0 PID: 57 Comm: runner Not tainted 6.12.48 #1
RIP: 0010:dmirror_devmem_fault+0x2a/0x1c0
Code: 00 00 41 55 41 54 55 53 48 83 ec 10
RSP: 0018:ffffc900001c7d48 EFLAGS: 00010246
Call Trace:
 <TASK>
 do_swap_page+0x1f0/0x9a0
 handle_mm_fault+0x6e1/0xd60
 </TASK>
---[ end trace 0000000000000000 ]---
RIP: 0010:dmirror_devmem_fault+0x2a/0x1c0
"""

WARN_LOG = """\
------------[ cut here ]------------
WARNING: CPU: 0 PID: 61 at mm/migrate_device.c:123 migrate_vma_collect_pmd+0x3c1/0x560
Modules linked in:
RIP: 0010:migrate_vma_collect_pmd+0x3c1/0x560
---[ end trace 0000000000000000 ]---
BUG: Bad page state in process runner  pfn:1a2b3
page: refcount:0 mapcount:1 mapping:0000000000000000 index:0x0 pfn:0x1a2b3
kernel BUG at mm/huge_memory.c:2950!
Oops: invalid opcode: 0000 [#2] NOPTI
RIP: 0010:__split_huge_pmd_locked+0x10/0x20
"""


def transcript(out: str, log: str, rc: int = 0, index: int = 0) -> str:
    """What /init prints for one scenario (CRLF, as the serial console does)."""
    lines = [f"@@HMMSIM BEGIN {index}"]
    lines += ["|" + ln for ln in (out + "\n").split("\n")[:-1]]
    lines += [f"@@HMMSIM RC {index} {rc}", f"@@HMMSIM LOG {index}"]
    lines += [">" + ln for ln in log.splitlines()]
    lines += [f"@@HMMSIM END {index}"]
    return "noise\r\n" + "\r\n".join(lines) + "\r\n@@HMMSIM DONE\r\n"


def test_transcript_complete_lines():
    runs = golden.parse_transcript(transcript("2 mmap = 0x100000000\n3 store = ok\n", ""))
    run = runs[0]
    assert run.complete and run.rc == 0
    assert run.out == ["2 mmap = 0x100000000", "3 store = ok"]
    assert run.partial is None
    assert golden.golden_lines(run) == run.out


def test_partial_line_completed_from_the_oops():
    runs = golden.parse_transcript(transcript("2 mmap = 0x100000000\n5 load ", OOPS_LOG, rc=137))
    run = runs[0]
    assert run.partial == "5 load "
    assert golden.golden_lines(run) == [
        "2 mmap = 0x100000000",
        "5 load OOPS dmirror_devmem_fault",
        "! OOPS dmirror_devmem_fault",
    ]


def test_child_partial_line_ends_the_scenario():
    # a child oopsed in line 5; the parent ended that line and reported the death
    out = "2 mmap = 0x100000000\n5 store \n4 fork = signal 9\n7 munmap = 0\n"
    run = golden.parse_transcript(transcript(out, OOPS_LOG))[0]
    assert golden.golden_lines(run) == [
        "2 mmap = 0x100000000",
        "5 store OOPS dmirror_devmem_fault",
        "! OOPS dmirror_devmem_fault",
    ]


def test_hung_run_without_end():
    text = "@@HMMSIM READY 0\r\n@@HMMSIM BEGIN 3\r\n"
    runs = golden.parse_transcript(text)
    run = runs[3]
    assert not run.complete
    run.status = "hung"
    assert golden.golden_lines(run) == ["! HUNG"]


def test_hung_after_an_oops_uses_the_mirror_and_the_console():
    # the process oopsed holding a mutex and never exited: no RC, no LOG
    text = "\r\n".join(
        ["@@HMMSIM READY 0", "@@HMMSIM BEGIN 0", "~>1 mmap", "~=1 mmap = 0x100000000", "~>4 ioctl"]
        + OOPS_LOG.splitlines()
    )
    run = golden.parse_transcript(text)[0]
    run.status = "hung"
    assert golden.golden_lines(run) == [
        "1 mmap = 0x100000000",
        "4 ioctl OOPS dmirror_devmem_fault",
        "! OOPS dmirror_devmem_fault",
    ]


def test_hung_after_a_held_childs_oops():
    # the held child oopsed in line 4; its parent went on and hung later
    text = "\r\n".join(
        ["@@HMMSIM BEGIN 0", "~>1 mmap", "~=1 mmap = 0x1", "~>4 ioctl"]
        + OOPS_LOG.splitlines()
        + ["~>3 fork", "~=3 fork = held", "~>6 munmap"]
    )
    run = golden.parse_transcript(text)[0]
    run.status = "hung"
    assert golden.golden_lines(run) == [
        "1 mmap = 0x1",
        "4 ioctl OOPS dmirror_devmem_fault",
        "! OOPS dmirror_devmem_fault",
    ]


def test_mirror_ignored_when_the_run_completes():
    text = transcript("1 mmap = 0x1\n", "").replace(
        "@@HMMSIM BEGIN 0\r\n", "@@HMMSIM BEGIN 0\r\n~>1 mmap\r\n~=1 mmap = 0x1\r\nnoise\r\n"
    )
    run = golden.parse_transcript(text)[0]
    assert run.complete and golden.golden_lines(run) == ["1 mmap = 0x1"]


def test_log_events():
    assert [e.line() for e in golden.log_events(OOPS_LOG.splitlines())] == [
        "! OOPS dmirror_devmem_fault"
    ]
    assert [e.line() for e in golden.log_events(WARN_LOG.splitlines())] == [
        "! WARNING migrate_vma_collect_pmd",
        "! BUG Bad page state",
        "! BUG mm/huge_memory.c:2950",
        "! OOPS __split_huge_pmd_locked",
    ]
    assert golden.oops_function(WARN_LOG.splitlines()) == "__split_huge_pmd_locked"
    assert golden.oops_function(["[    1.000000] HMM test module loaded."]) is None


def test_timestamps_stripped():
    assert golden.strip_stamp("[   12.345678] Oops: 0002 [#1]") == "Oops: 0002 [#1]"
    ev = golden.log_events(["[    3.100000] Oops: 0002", "[    3.100001] RIP: 0010:f+0x1/0x2"])
    assert [e.line() for e in ev] == ["! OOPS f"]


def test_compare():
    g = "1 mmap = 0x1\n2 load = z\n! WARNING f\n"
    assert golden.compare("a", g, "1 mmap = 0x1\n2 load = z\n! WARNING f\n").agree
    c = golden.compare("a", g, "1 mmap = 0x1\n2 load = z*2\n")
    assert not c.agree and not c.ops_agree and not c.events_agree
    assert (c.first_line, c.kernel, c.model) == (2, "2 load = z", "2 load = z*2")
    c = golden.compare("a", g, "1 mmap = 0x1\n! WARNING f\n")
    assert (c.first_line, c.kernel, c.model) == (2, "2 load = z", "<end>")


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    out, off = {}, 0
    while True:
        assert data[off : off + 6] == b"070701"
        f = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize, rdev = f[1], f[6], f[11], (f[9], f[10])
        name = data[off + 110 : off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off : off + size]
        off += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body, rdev)


def test_initramfs_file_list_and_archive():
    entries = initramfs.file_list(b"BB", b"RUN", [b"load 0 1\n", b"peek 0\n"])
    names = [e.path for e in entries]
    assert names[:6] == ["bin", "dev", "proc", "sys", "tmp", "scn"]
    for need in ("init", "runner", "bin/busybox", "dev/console", "scn/0000.scn", "scn/0001.scn"):
        assert need in names
    for e in entries:  # parents first
        parent = e.path.rpartition("/")[0]
        assert not parent or names.index(parent) < names.index(e.path)
    files = _read_newc(initramfs.newc(entries))
    assert files["scn/LIST"][1] == b"0000.scn\n0001.scn\n"
    assert files["scn/0001.scn"][1] == b"peek 0\n"
    assert files["init"][0] & 0o777 == 0o755
    assert files["init"][1].startswith(b"#!/bin/busybox sh\n")
    assert files["dev/console"][2] == (5, 1)
    init = files["init"][1].decode()
    for must in ("hmmsim.start=", "transparent_hugepage/enabled", "compaction_proactiveness"):
        assert must in init


def test_cmdline_reserves_the_coherent_ranges():
    c = initramfs.CMDLINE
    assert "memmap=512M$0x40000000" in c
    assert "test_hmm.spm_addr_dev0=0x40000000" in c
    assert "test_hmm.spm_addr_dev1=0x50000000" in c
    assert "console=ttyS0" in c and "panic=-1" in c


def test_check_config():
    text = "CONFIG_64BIT=y\n# CONFIG_SMP is not set\nCONFIG_TEST_HMM=y\n"
    bad = machine.check_config(text)
    assert not any(b.startswith(("CONFIG_64BIT=", "CONFIG_SMP=", "CONFIG_TEST_HMM=")) for b in bad)
    assert any(b.startswith("CONFIG_DEVICE_PRIVATE=y") for b in bad)


def test_runner_tables_match_the_model():
    """runner.c's errno names and ioctl numbers are the ones the model prints/uses."""
    from hmmsim.drivers import test_hmm_uapi as uapi
    from hmmsim.scenario import interp

    src = RUNNER_C.read_text()
    table = dict((int(n), name) for n, name in re.findall(r'\{(\d+),\s*"(E\w+)"\}', src))
    # the runner knows every uapi errno (first name of each number); the model
    # may print fewer names, but never another name for the same number
    assert {n: table.get(n) for n in interp.ERRNO_NAMES} == interp.ERRNO_NAMES
    assert len(table) == 131 and table[11] == "EAGAIN" and table[35] == "EDEADLK"
    nrs = dict(re.findall(r'\{"(\w+)", HMM_REQ\((0x[0-9a-f]+)\)\}', src))
    size = struct.calcsize("5Q")
    for name, nr in nrs.items():
        want = getattr(uapi, "HMM_DMIRROR_" + name)
        # _IOWR('H', nr, 40 bytes)
        assert (3 << 30) | (size << 16) | (ord("H") << 8) | int(nr, 16) == want, name


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_runner_patterns_match_the_model(tmp_path):
    """pat/pagehash/RLE and the signal report, on the host kernel: no dmirror,
    no pagemap (soft-dirty differs by config), only values the spec fixes."""
    from hmmsim.scenario import run_text

    exe = tmp_path / "runner"
    r = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(exe), str(RUNNER_C)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip("static gcc unavailable: " + r.stderr[-200:])
    scn = tmp_path / "p.scn"
    scn.write_text(
        "mmap 0x100000000 16384 read|write private|anon|fixed_noreplace\n"
        "store 0x100000000 2 7\n"
        "load 0x100000000 4   # two patterned pages, two zero pages\n"
        "poke 0x100002008 0x1234\n"
        "peek 0x100002008\n"
        "load 0x100000000 3\n"
        "mprotect 0x100001000 4096 read\n"
        "store 0x100000000 2 65543\n"
        "munmap 0x100003000 4096\n"
        "load 0x100000000 5\n"
        "peek 0x100003000\n"
        "fork\n"
        "  store 0x100000000 1 9\n"
        "  load 0x100000000 1\n"
        "end\n"
        "load 0x100000000 1\n"
        "munmap -1 4096\n"
        "mmap 0 -1 read private|anon\n"
    )
    host = subprocess.run([str(exe), str(scn)], capture_output=True, text=True, timeout=30)
    assert host.returncode == 0, host.stderr
    assert host.stdout == run_text(scn.read_text()).text()


def test_qemu_command_and_paths(tmp_path):
    paths = machine.Paths(tmp_path)
    cmd = machine.qemu_command(paths, tmp_path / "initrd.gz", 7)
    assert cmd[0] == "qemu-system-x86_64"
    for a, b in (("-smp", "1"), ("-kernel", str(paths.bzimage)), ("-serial", "stdio")):
        assert cmd[cmd.index(a) + 1] == b
    assert "-no-reboot" in cmd and "-enable-kvm" not in cmd
    assert cmd[-1].endswith(" hmmsim.start=7")
    (tmp_path / "b.scn").write_text("peek 0\n")
    (tmp_path / "a.scn").write_text("peek 0\n")
    files = machine.scenario_files([str(tmp_path)])
    assert [f.name for f in files] == ["a.scn", "b.scn"]
    assert machine.golden_paths(files[0], None) == (tmp_path / "a.golden", tmp_path / "a.log")
    with pytest.raises(machine.OracleError):
        machine.scenario_files([str(tmp_path / "missing.scn")])
