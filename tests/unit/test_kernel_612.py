"""The "6.12" kernel profile (issue 13 part 2): KConfig.kernel, the dmirror
behaviours that differ from the pin, and the CLI's --kernel.

Each driver test runs the same scenario on both profiles: the differences are
real (docs/kernel-versions.md cites both trees), and at the pin both
scenarios end in the driver dereferencing a device-private page.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from hmmsim.bug import KernelOops
from hmmsim.cli import main
from hmmsim.drivers.test_hmm import dmirror_fault_window
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EFAULT
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kconfig import KERNELS, ConfigError, KConfig
from hmmsim.kernel import Kernel
from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096


# --- KConfig -------------------------------------------------------------------------------
def test_kernel_field_defaults_to_the_pin():
    assert KConfig().kernel == "mainline"
    assert KConfig().features == frozenset({"d"})
    assert set(KERNELS) == {"mainline", "6.12"}


def test_612_profile_has_no_series_d():
    cfg = KConfig(kernel="6.12")
    assert cfg.features == frozenset() and not cfg.has("d")
    # a mainline config moved to 6.12 loses (d), keeps the rest
    moved = replace(KConfig(features=frozenset({"a", "d"})), kernel="6.12")
    assert moved.features == frozenset({"a"})
    assert "linux-6.12" in repr(cfg)
    assert Kernel(kernel="6.12").config.kernel == "6.12"


@pytest.mark.parametrize("bad", ["6.1", "v6.12", "", "MAINLINE", 6.12, None])
def test_unknown_kernel_profiles_are_config_errors(bad):
    with pytest.raises(ConfigError, match="kernel profile"):
        KConfig(kernel=bad)


# --- dmirror differences ---------------------------------------------------------------------
def _kernel(profile, fastpath=True):
    k = make_kernel(replace(selftest_config(), kernel=profile))
    k.fastpath = fastpath
    return k, k.spawn()


def test_fault_window_is_32_at_the_pin_and_64_in_612():
    assert dmirror_fault_window(_kernel("mainline")[0]) == 32
    assert dmirror_fault_window(_kernel("6.12")[0]) == 64


@pytest.mark.parametrize("fastpath", [False, True], ids=["per-entry", "fastpath"])
def test_read_with_device_pages_beyond_32(fastpath):
    """Page 0 untouched, pages 1..63 on dev0, READ of 0..63: one fault of
    page 0 runs on to the end of the hmm_range_fault range. With 6.12's
    64-page window that covers every device page; at the pin pages 32..63
    are left on the device, reported VALID, and the driver copies from a
    device-private page (an oops in page_address)."""
    for profile in ("mainline", "6.12"):
        k, p = _kernel(profile, fastpath)
        fd = p.open("/dev/hmm_dmirror0", O_RDWR)
        a = p.mmap(0, 64 * PAGE, RW, ANON)
        p.store_array(a + PAGE, np.arange(63 * 1024, dtype=np.int32))
        cmd = hmm_dmirror_cmd(addr=a + PAGE, ptr=np.zeros(63 * 1024, np.int32), npages=63)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == 63
        buf = np.full(64 * 1024, -1, dtype=np.int32)
        cmd = hmm_dmirror_cmd(addr=a, ptr=buf, npages=64)
        if profile == "mainline":
            with pytest.raises(KernelOops, match="page_address"):
                p.ioctl(fd, HMM_DMIRROR_READ, cmd)
            continue
        assert p.ioctl(fd, HMM_DMIRROR_READ, cmd) == 0
        assert (cmd.cpages, cmd.faults) == (64, 1)
        assert (buf[:1024] == 0).all() and (buf[1024:] == np.arange(63 * 1024)).all()
        assert all(entry_at(p, a + i * PAGE)[1] & 1 for i in range(64))  # all back in RAM
        assert not k.warnings
        check_invariants(k)


@pytest.mark.parametrize("zero", [False, True], ids=["hole", "zero-page"])
@pytest.mark.parametrize("npages", [1, 16], ids=["one", "bulk"])
@pytest.mark.parametrize("fastpath", [False, True], ids=["per-entry", "fastpath"])
def test_migrated_hole_is_writable_in_the_mirror_under_612(npages, fastpath, zero):
    """MIGRATE_TO_DEV of untouched pages of a RW mapping, then a device WRITE.
    6.12 tags the mirror entries writable (the vma is VM_WRITE): the write
    needs no fault. At the pin the tag comes from the src entry only, so the
    WRITE faults, hmm_range_fault reports the (writable) device entries
    without faulting them, and the driver writes to a device-private page."""
    for profile in ("mainline", "6.12"):
        k, p = _kernel(profile, fastpath)
        fd = p.open("/dev/hmm_dmirror0", O_RDWR)
        a = p.mmap(0, npages * PAGE, RW, ANON)
        for i in range(npages if zero else 0):
            p.load(a + i * PAGE, 1)  # the zero page: no source page either
        cmd = hmm_dmirror_cmd(addr=a, ptr=np.zeros(npages * 1024, np.int32), npages=npages)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == npages
        data = np.arange(7, 7 + npages * 1024, dtype=np.int32)
        cmd = hmm_dmirror_cmd(addr=a, ptr=data, npages=npages)
        if profile == "mainline":
            with pytest.raises(KernelOops, match="page_address"):
                p.ioctl(fd, HMM_DMIRROR_WRITE, cmd)
            continue
        assert p.ioctl(fd, HMM_DMIRROR_WRITE, cmd) == 0
        assert (cmd.cpages, cmd.faults) == (npages, 0)
        assert (p.load_array(a, npages * 1024) == data).all()  # migrate_to_ram brings it
        assert not k.warnings
        check_invariants(k)


def test_migrated_page_of_a_readonly_mapping_stays_readonly_in_612():
    """The 6.12 rule needs VM_WRITE: a hole of a PROT_READ mapping is still a
    read-only mirror entry in both profiles. A WRITE then faults, and
    hmm_range_fault reports the caller's read-only device entry without
    faulting it: dmirror_do_fault's WARN and -EFAULT, in both."""
    for profile in ("mainline", "6.12"):
        k, p = _kernel(profile)
        fd = p.open("/dev/hmm_dmirror0", O_RDWR)
        a = p.mmap(0, PAGE, PROT_READ, ANON)
        cmd = hmm_dmirror_cmd(addr=a, ptr=np.zeros(1024, np.int32), npages=1)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == 1
        perm = np.zeros(1, dtype=np.uint8)
        assert p.ioctl(fd, HMM_DMIRROR_SNAPSHOT, hmm_dmirror_cmd(addr=a, ptr=perm, npages=1)) == 0
        assert perm[0] == 0x20 | 0x01  # DEV_PRIVATE_LOCAL | READ
        cmd = hmm_dmirror_cmd(addr=a, ptr=np.ones(1024, np.int32), npages=1)
        assert p.ioctl(fd, HMM_DMIRROR_WRITE, cmd) == -EFAULT
        assert [w.msg for w in k.warnings] == ["dmirror_do_fault: write requested but not granted"]


def test_flags_ioctl_does_not_exist_in_612():
    """HMM_DMIRROR_FLAGS (0x08, FAIL_ALLOC) came with the THP series: an
    unknown command, -EINVAL, in 6.12; at the pin it sets the flags."""
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_FLAG_FAIL_ALLOC, HMM_DMIRROR_FLAGS
    from hmmsim.errno import EINVAL

    for profile, want in (("mainline", 0), ("6.12", -EINVAL)):
        k, p = _kernel(profile)
        fd = p.open("/dev/hmm_dmirror0", O_RDWR)
        a = p.mmap(0, PAGE, RW, ANON)
        cmd = hmm_dmirror_cmd(
            addr=a, ptr=np.zeros(1024, np.int32), npages=HMM_DMIRROR_FLAG_FAIL_ALLOC
        )
        assert p.ioctl(fd, HMM_DMIRROR_FLAGS, cmd) == want


# --- CLI -------------------------------------------------------------------------------------
def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_info_exposes_the_profile():
    r = _run("info", "--kernel", "6.12", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kernel"]["profile"] == "6.12"
    assert data["features"]["d"] is False
    r = _run("info", "--json")
    assert json.loads(r.output)["kernel"]["profile"] == "mainline"
    r = _run("info", "--kernel", "6.12")
    assert "profile    6.12" in r.output and "series d   [off]" in r.output


def test_kernel_option_errors_are_one_line():
    for args in (
        ("info", "--kernel", "6.12", "--feature", "d"),
        ("info", "--kernel", "5.4"),
        ("selftest", "--kernel", "6.12", "--feature", "d", "-l"),
        ("fuzz", "--kernel", "6.12", "--feature", "d", "--steps", "1"),
    ):
        r = _run(*args)
        assert r.exit_code != 0
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, args


def test_commands_take_kernel():
    for sub in ("info", "demo", "selftest", "fuzz"):
        r = _run(sub, "--help")
        assert "--kernel" in r.output, sub
    r = _run("selftest", "--kernel", "6.12", "-r", "hmm.hmm_device_private.open_close")
    assert r.exit_code == 0 and "ok 1" in r.output, r.output
    r = _run("fuzz", "--kernel", "6.12", "--steps", "30", "--seed", "3", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kernel"] == "6.12" and all("kernel=6.12" in c for c in data["configs"])


# --- series (d) off: the collect from before THP device migration --------------------------
PRE_D = [("6.12", ()), ("mainline", ())]  # 6.12, and the pin with (d) switched off
PRE_D_IDS = ["6.12", "mainline-no-d"]


def _thp(p, touch=True):
    """A PMD-mapped THP (written), or the huge zero page (read only)."""
    from hmmsim.include.mman import MADV_HUGEPAGE
    from hmmsim.kconfig import PMD_SIZE

    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    assert p.madvise(h, PMD_SIZE, MADV_HUGEPAGE) == 0
    if touch:
        p.store_array(h, np.arange(512 * 1024, dtype=np.int32))
    else:
        p.load(h, 1)
    assert entry_at(p, h)[0] == "pmd"
    return h


def _pre_d(profile, feats, fastpath=True):
    k = make_kernel(replace(selftest_config(), kernel=profile, features=frozenset(feats)))
    k.fastpath = fastpath
    p = k.spawn()
    return k, p, p.open("/dev/hmm_dmirror0", O_RDWR)


@pytest.mark.parametrize("profile,feats", PRE_D, ids=PRE_D_IDS)
def test_pre_d_thp_goes_to_the_device_as_512_pages(profile, feats):
    """Without (d) a THP is split by collect: 512 device-private PTEs, never a
    device-private PMD, and the snapshot shows no PMD flag. With (d) (the
    default at the pin) it moves whole, as one device-private PMD."""
    for prof, fs, pmd in ((profile, feats, False), ("mainline", ("d",), True)):
        k, p, fd = _pre_d(prof, fs)
        h = _thp(p)
        cmd = hmm_dmirror_cmd(addr=h, ptr=np.zeros(512 * 1024, np.int32), npages=512)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == 512
        assert (entry_at(p, h)[0] == "pmd") is pmd
        perm = np.zeros(512, dtype=np.uint8)
        snap = hmm_dmirror_cmd(addr=h, ptr=perm, npages=512)
        assert p.ioctl(fd, HMM_DMIRROR_SNAPSHOT, snap) == 0
        assert (perm == (0x20 | 0x02 | (0x04 if pmd else 0))).all()  # DEV_PRIVATE_LOCAL|WRITE
        assert (p.load_array(h, 512 * 1024) == np.arange(512 * 1024)).all()
        check_invariants(k)


@pytest.mark.parametrize("fastpath", [False, True], ids=["per-entry", "fastpath"])
@pytest.mark.parametrize("profile,feats", PRE_D, ids=PRE_D_IDS)
def test_pre_d_pte_mapped_thp_is_not_collected(profile, feats, fastpath):
    """mprotect of one page splits the PMD; the folio stays large. Before (d)
    collect leaves a page of a large folio alone ("FIXME support THP"): none
    of them migrates and the driver's read-back finds no mirror entry
    (-ENOENT). With (d) collect splits the folio and all 16 migrate."""
    for prof, fs, want in ((profile, feats, -2), ("mainline", ("d",), 0)):
        k, p, fd = _pre_d(prof, fs, fastpath)
        h = _thp(p)
        assert p.mprotect(h, PAGE, PROT_READ) == 0
        assert entry_at(p, h + 8 * PAGE)[0] == "pte"
        cmd = hmm_dmirror_cmd(addr=h + 8 * PAGE, ptr=np.zeros(16 * 1024, np.int32), npages=16)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == want
        device = [_is_device(k, p, h + (8 + i) * PAGE) for i in range(16)]
        assert device == [want == 0] * 16
        assert (p.load_array(h + 8 * PAGE, 16 * 1024) == np.arange(8 * 1024, 24 * 1024)).all()
        check_invariants(k)


@pytest.mark.parametrize("profile,feats", PRE_D, ids=PRE_D_IDS)
def test_pre_d_collect_splits_a_thp_whatever_it_selects(profile, feats):
    """MIGRATE_TO_SYS (SELECT_DEVICE_PRIVATE only) over a system THP: nothing
    migrates either way, but before (d) the collect has split the THP into
    PTEs; with (d) it is skipped and stays PMD-mapped."""
    for prof, fs, kind in ((profile, feats, "pte"), ("mainline", ("d",), "pmd")):
        k, p, fd = _pre_d(prof, fs)
        h = _thp(p)
        cmd = hmm_dmirror_cmd(addr=h, ptr=np.zeros(512 * 1024, np.int32), npages=512)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, cmd) == 0 and cmd.cpages == 0
        assert entry_at(p, h)[0] == kind
        check_invariants(k)


@pytest.mark.parametrize("profile,feats", PRE_D, ids=PRE_D_IDS)
def test_pre_d_huge_zero_pmd_is_split_by_collect(profile, feats):
    """The huge zero page: before (d) collect splits it into zero PTEs and
    each is replaced by a device page (512 PTEs); with (d) and
    SELECT_COMPOUND the hole goes over as one device-private PMD."""
    for prof, fs, kind in ((profile, feats, "pte"), ("mainline", ("d",), "pmd")):
        k, p, fd = _pre_d(prof, fs)
        h = _thp(p, touch=False)
        cmd = hmm_dmirror_cmd(addr=h, ptr=np.zeros(512 * 1024, np.int32), npages=512)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == 512
        assert entry_at(p, h)[0] == kind
        assert _is_device(k, p, h)
        assert (p.load_array(h, 512 * 1024) == 0).all()
        check_invariants(k)


def _is_device(k, p, addr) -> bool:
    level, e = entry_at(p, addr)
    if e & 1 or not e:
        return False
    leaf = k.swp.softleaf_from_pmd(e) if level == "pmd" else k.swp.softleaf_from_pte(e)
    return k.swp.softleaf_is_device_private(leaf)
