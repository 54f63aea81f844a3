"""The guest's initramfs: busybox, the runner, the scenarios and /init.

Written in Python (the newc cpio format, gzip-compressed), so recording needs
no cpio tool. `file_list()` is the pure part the unit tests check.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

#: Kernel command line (besides hmmsim.start=N). One CPU comes from -smp 1.
#: memmap=512M$1G reserves [1 GiB, 1.5 GiB) in the e820 map (type reserved,
#: so not System RAM: memremap_pages() accepts it); test_hmm's two coherent
#: devices (dmirror 2, 3) take one 256 MiB half each (DEVMEM_CHUNK_SIZE).
#: No panic on oops: the process dies, /init prints the log and reboots
#: (-no-reboot makes QEMU exit; the host restarts at the next scenario).
#: panic=-1: a panic reboots at once instead of hanging. no_timer_check: under
#: TCG on a loaded host the IO-APIC timer check can fail and panic the boot.
SPM_BASE = 0x40000000
SPM_SIZE = 256 << 20
CMDLINE = (
    "console=ttyS0 loglevel=1 transparent_hugepage=madvise "
    f"memmap=512M${SPM_BASE:#x} "
    f"test_hmm.spm_addr_dev0={SPM_BASE:#x} test_hmm.spm_addr_dev1={SPM_BASE + SPM_SIZE:#x} "
    "panic_on_warn=0 panic=-1 nokaslr norandmaps no_timer_check"
)

INIT = r"""#!/bin/busybox sh
# hmmsim oracle guest /init: run the scenarios from hmmsim.start=N on.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
exec </dev/console >/dev/console 2>&1
# determinism: THP only where madvised, no proactive compaction, no ASLR,
# nothing but emergencies on the console while a scenario runs
echo madvise > /sys/kernel/mm/transparent_hugepage/enabled
echo 0 > /proc/sys/vm/compaction_proactiveness
echo 0 > /proc/sys/kernel/randomize_va_space
dmesg -n 1
start=0
for w in $(cat /proc/cmdline); do
  case "$w" in hmmsim.start=*) start="${w#hmmsim.start=}" ;; esac
done
echo "@@HMMSIM INFO devices $(ls /dev | grep -c hmm_dmirror)"
# coherent devices: their first chunk is the reserved range (PFNs 0x40000..0x60000)
dmesg | grep 'added new 256 MB chunk' | sed 's/^.*PFNs/@@HMMSIM INFO chunk PFNs/'
echo "@@HMMSIM INFO thp $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
echo "@@HMMSIM READY $start"
i=0
for f in $(cat /scn/LIST); do
  if [ "$i" -ge "$start" ]; then
    dmesg -c >/dev/null
    echo "@@HMMSIM BEGIN $i"
    cd /tmp
    HMMSIM_MIRROR_FD=3 /runner "/scn/$f" >/tmp/out 2>/tmp/err 3>/dev/console
    rc=$?
    cd /
    { cat /tmp/out; echo; } | sed 's/^/|/'
    echo "@@HMMSIM RC $i $rc"
    sed 's/^/%/' /tmp/err
    echo "@@HMMSIM LOG $i"
    dmesg -c | sed 's/^/>/'
    echo "@@HMMSIM END $i"
    rm -f /tmp/out /tmp/err
    if [ "$(cat /proc/sys/kernel/tainted)" != 0 ]; then
      echo "@@HMMSIM REBOOT $i tainted $(cat /proc/sys/kernel/tainted)"
      reboot -f
    fi
  fi
  i=$((i+1))
done
echo "@@HMMSIM DONE"
reboot -f
"""


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, no leading '/'
    mode: int  # full st_mode
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def scenario_name(i: int) -> str:
    return f"{i:04d}.scn"


def file_list(busybox: bytes, runner: bytes, scenarios: list[bytes]) -> list[Entry]:
    """The archive's entries, parents before children."""
    d = stat.S_IFDIR | 0o755
    entries = [
        Entry("bin", d),
        Entry("dev", d),
        Entry("proc", d),
        Entry("sys", d),
        Entry("tmp", stat.S_IFDIR | 0o1777),
        Entry("scn", d),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("bin/busybox", stat.S_IFREG | 0o755, busybox),
        Entry("runner", stat.S_IFREG | 0o755, runner),
        Entry("init", stat.S_IFREG | 0o755, INIT.encode()),
    ]
    names = [scenario_name(i) for i in range(len(scenarios))]
    entries += [
        Entry(f"scn/{n}", stat.S_IFREG | 0o644, s) for n, s in zip(names, scenarios, strict=True)
    ]
    entries.append(
        Entry("scn/LIST", stat.S_IFREG | 0o644, "".join(n + "\n" for n in names).encode())
    )
    return entries


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc(entries: list[Entry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks."""
    out = bytearray()

    def header(ino: int, e: Entry, name: bytes) -> bytes:
        fields = [
            ino,
            e.mode,
            0,
            0,
            1,
            0,
            len(e.data),
            0,
            0,
            e.rdev[0],
            e.rdev[1],
            len(name) + 1,
            0,
        ]
        return b"070701" + b"".join(f"{v:08x}".encode() for v in fields)

    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], 1):
        name = e.path.encode()
        h = header(ino if e.path != "TRAILER!!!" else 0, e, name) + name + b"\0"
        out += h + _pad4(len(h))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def build(busybox: bytes, runner: bytes, scenarios: list[bytes]) -> bytes:
    """The gzip-compressed initramfs."""
    return gzip.compress(newc(file_list(busybox, runner, scenarios)), compresslevel=6, mtime=0)
