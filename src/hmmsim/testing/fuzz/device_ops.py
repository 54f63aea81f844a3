"""The World's dmirror device operations: open, close and the ioctls (READ, WRITE,
MIGRATE_TO_DEV, MIGRATE_TO_SYS, EXCLUSIVE, CHECK_EXCLUSIVE, SNAPSHOT, RELEASE,
FLAGS=FAIL_ALLOC), and the checks of their results against the shadow.
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.test_hmm import DPT_XA_TAG_WRITE
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_PROT_ERROR,
    HMM_DMIRROR_PROT_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EINVAL
from hmmsim.include.mm_types import folio_mapcount, page_folio
from hmmsim.include.mman import (
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import (
    _PAGE_PSE,
    pmd_pfn,
    pmd_present,
    pte_none,
    pte_present,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.mm.memremap import page_pgmap
from hmmsim.testing.fuzz.ops import (
    HPAGE_NR,
    IOCTLS,
    Close,
    FuzzFailure,
    Ioctl,
    Open,
    fill,
    tokens,
)
from hmmsim.testing.fuzz.peek import PeekError, peek_frame
from hmmsim.testing.fuzz.shadow import (
    FdState,
    ProcState,
)
from hmmsim.userspace import entry_at


class DeviceOps:
    """World's handlers of the dmirror device operations: open, close and the
    ioctls, with the hazards the fuzzer does not issue (a mixin of World)."""

    # the dmirror device
    def mirrors(self, h: int, minor: int) -> bool:
        """Does a live mirror of process h's mm on /dev/hmm_dmirror<minor> exist?"""
        ps = self.procs.get(h)
        if ps is None:
            return False
        return any(
            getattr(getattr(mni.ops, "mdevice", None), "minor", None) == minor
            for mni in ps.proc.mm.notifier_subscriptions
        )

    def _open(self, op: Open):
        ps = self._alive(op.h)
        if ps is None or op.fdh in self.fds:
            return False
        if self.mirrors(op.h, op.minor):
            # A second mirror of one mm on one device goes stale: each ignores the
            # MMU_NOTIFY_MIGRATE events of the other's migrations (owner == its
            # device), a use-after-free in lib/test_hmm.c. Not issued.
            self.stats["skipped_second_mirror"] += 1
            return False
        self.emit(f"fd{op.fdh} = p{op.h}.open('/dev/hmm_dmirror{op.minor}', O_RDWR)")
        fd = ps.proc.open(f"/dev/hmm_dmirror{op.minor}", O_RDWR)
        if fd < 0:
            raise FuzzFailure("errno", f"open: returned {fd}")
        self.emit(f"assert fd{op.fdh} >= 0, fd{op.fdh}")
        ps.fds[op.fdh] = fd
        self.fds[op.fdh] = FdState(op.minor, op.h)

    def _close(self, op: Close):
        ps = self._alive(op.h)
        if ps is None or op.fdh not in ps.fds:
            return False
        self.emit(f"ret = p{op.h}.close(fd{op.fdh})")
        ret = ps.proc.close(ps.fds.pop(op.fdh))
        self._expect_ret("close", ret, 0)
        self.sweep()

    def _owned_device_private(self, proc, addr: int, mdevice) -> bool:
        """Does the CPU map addr with a device-private entry of mdevice's memory?"""
        level, e = entry_at(proc, addr)
        swp = self.k.swp
        if level == "pmd" and e and not pmd_present(e):
            entry = swp.softleaf_from_pmd(e)
        elif level == "pte" and not pte_none(e) and not pte_present(e):
            entry = swp.softleaf_from_pte(e)
        else:
            return False
        if not swp.softleaf_is_device_private(entry):
            return False
        return page_pgmap(self.k.softleaf_to_page(entry)).owner is mdevice

    def dmirror_oops_hazard(self, h: int, fdh: int, cmd: str, addr: int, npages: int) -> bool:
        """Would this READ/WRITE crash the kernel in test_hmm itself?

        dmirror_fault() stores what hmm_range_fault() returns in the mirror's
        pt; for a device-private page of the mirror's own device (hmm reports
        those without faulting) that is the ZONE_DEVICE page itself, which has
        no linear mapping, and dmirror_do_read()/do_write() then memcpy through
        it: an oops in lib/test_hmm.c, a KernelOops in the model. It happens
        when some page from the first one that needs a fault to the end of the
        range is such a page. The fuzzer does not issue these.
        """
        ps = self.procs.get(h)
        f = self.fds.get(fdh)
        target = self.procs.get(f.opener) if f is not None else None
        if ps is None or target is None or fdh not in ps.fds or cmd not in ("READ", "WRITE"):
            return False
        d = ps.proc.fds[ps.fds[fdh]].private
        if d is None or not d.mdevice.is_private_zone():
            return False
        need = False
        for v in range(addr >> PAGE_SHIFT, (addr >> PAGE_SHIFT) + npages):
            e = d.pt.get(v)
            if e is None or (cmd == "WRITE" and e[1] != DPT_XA_TAG_WRITE):
                need = True
            if need and v in target.pages:
                if self._owned_device_private(target.proc, v << PAGE_SHIFT, d.mdevice):
                    return True
        return False

    def shared_thp_migrate_hazard(self, fdh: int, cmd: str, addr: int, npages: int) -> bool:
        """Would this MIGRATE_TO_DEV meet the suspected upstream VM_BUG_ON?

        A PMD-mapped THP that another mapping (a fork child) shares, migrated
        with order-0 fallback, leaves that mapping's PMD migration entry behind
        after migrate_vma_split_unmapped_folio() and trips
        VM_BUG_ON_FOLIO in remove_migration_pte() (see
        fuzz-findings/migrate-shared-thp-fallback-remaps-child-pmd.py). The
        fuzzer does not migrate ranges that hold such a THP.
        """
        f = self.fds.get(fdh)
        target = self.procs.get(f.opener) if f is not None else None
        if cmd != "MIGRATE_TO_DEV" or target is None:
            return False
        k = self.k
        block = addr & ~(HPAGE_NR * PAGE_SIZE - 1)
        while block < addr + npages * PAGE_SIZE:
            level, e = entry_at(target.proc, block)
            if level == "pmd" and e & _PAGE_PSE and pmd_present(e):
                pfn = pmd_pfn(e)
                shared = pfn != k.huge_zero_pfn and (
                    folio_mapcount(page_folio(k.mem.pfn_to_page(pfn))) > 1
                )
                if shared:
                    return True
            block += HPAGE_NR * PAGE_SIZE
        return False

    def _ioctl(self, op: Ioctl):
        ps = self._alive(op.h)
        if ps is None or op.fdh not in ps.fds:
            return False
        fd = ps.fds[op.fdh]
        target = self.procs.get(self.fds[op.fdh].opener)
        if target is None and op.cmd in ("READ", "WRITE"):
            # dmirror_fault() returns 0 when mmget_not_zero() fails, so READ and
            # WRITE through an fd whose opener exited spin forever, in the C too.
            self.stats["skipped_dead_mm"] += 1
            return False
        if self.dmirror_oops_hazard(op.h, op.fdh, op.cmd, op.addr, op.npages):
            self.stats["skipped_oops_hazard"] += 1
            return False
        if self.shared_thp_migrate_hazard(op.fdh, op.cmd, op.addr, op.npages):
            self.stats["skipped_upstream_hazard"] += 1
            return False
        req = IOCTLS[op.cmd]
        if op.cmd == "FAIL_ALLOC":
            self.emit(
                f"ret = p{op.h}.ioctl(fd{op.fdh}, HMM_DMIRROR_FLAGS, "
                f"hmm_dmirror_cmd(addr=0, npages=HMM_DMIRROR_FLAG_FAIL_ALLOC))"
            )
            ret = ps.proc.ioctl(fd, req, hmm_dmirror_cmd(npages=HMM_DMIRROR_FLAG_FAIL_ALLOC))
            # Linux 6.12 has no HMM_DMIRROR_FLAGS: an unknown command there
            self._expect_ret("FLAGS", ret, -EINVAL if self.k.config.kernel == "6.12" else 0)
            return
        n = op.npages
        size = n if op.cmd == "SNAPSHOT" else n * PAGE_SIZE
        if op.cmd == "WRITE":
            src = f"fill({op.tag}, {size:#x})"
            data = fill(op.tag, size)
            if self.token_stores:  # only a page's first 8 bytes (the token plane)
                data = tokens(data, op.addr)
                src = f"tokens({src}, {op.addr:#x})"
            buf = np.frombuffer(data, dtype=np.uint8).copy()
            self.emit(f"buf = np.frombuffer({src}, np.uint8).copy()")
        else:
            buf = np.zeros(size, dtype=np.uint8)
            self.emit(f"buf = np.zeros({size:#x}, np.uint8)")
        self.emit(
            f"ret = p{op.h}.ioctl(fd{op.fdh}, HMM_DMIRROR_{op.cmd}, "
            f"hmm_dmirror_cmd(addr={op.addr:#x}, ptr=buf, npages={n}))"
        )
        pending = self._fail_alloc_pending()
        ret = ps.proc.ioctl(fd, req, hmm_dmirror_cmd(addr=op.addr, ptr=buf, npages=n))
        injected = bool(pending) and self._injected(pending)
        if ret < 0:
            self.errnos[f"{op.cmd} {ret}"] += 1
        self.emit(f"assert ret == {ret}, ret")
        if target is None:  # the mirrored mm is gone: nothing to compare
            if op.cmd == "RELEASE":
                self.sweep()
            return
        first = op.addr >> PAGE_SHIFT
        pages = [target.pages.get(v) for v in range(first, first + n)]
        in_eof = all(pg is not None and pg.cell is not None for pg in pages)
        # What a successful command needs of the vma: MIGRATE_TO_DEV checks VM_READ
        # (its window loop), EXCLUSIVE GUPs with FOLL_WRITE; READ needs VM_READ only
        # for pages it must fault (pt entries left by EXCLUSIVE or a migration read
        # without one), so a successful READ only proves the pages are mapped.
        need = {"EXCLUSIVE": PROT_WRITE, "MIGRATE_TO_DEV": PROT_READ}.get(op.cmd, 0)
        allowed = in_eof and all(pg.prot & need == need for pg in pages)
        if op.cmd in ("READ", "MIGRATE_TO_DEV", "EXCLUSIVE"):
            if ret == 0:
                if not allowed:
                    raise FuzzFailure(
                        "errno", f"{op.cmd}: returned 0 over an unmapped or inaccessible page"
                    )
                want = self.shadow_bytes(target, op.addr, n * PAGE_SIZE)
                self.compare(buf, want, f"{op.cmd} buffer", "buf")
            elif (
                op.cmd == "READ"
                and allowed
                and not injected
                and all(pg.prot & PROT_READ for pg in pages)
            ):
                raise FuzzFailure(
                    "errno",
                    f"{op.cmd}: returned {ret} for a mapped readable range",
                    check=["assert ret == 0, ret"],
                )
            self.verify(target, op.addr, n)
        elif op.cmd == "WRITE":
            if ret == 0:
                if not (in_eof and all(pg.prot & PROT_WRITE for pg in pages)):
                    raise FuzzFailure(
                        "errno", "WRITE: returned 0 over an unmapped or read-only page"
                    )
                for i, pg in enumerate(pages):
                    pg.cell.data = buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE].tobytes()
            else:
                self._partial_write(target, op.addr, pages, buf)
            self.verify(target, op.addr, n)
        elif op.cmd == "SNAPSHOT":
            for i, pg in enumerate(pages if ret == 0 else ()):
                b = int(buf[i])
                readable = pg is not None and pg.prot & PROT_READ
                if not readable and b != HMM_DMIRROR_PROT_ERROR:
                    raise FuzzFailure(
                        "errno",
                        f"SNAPSHOT: {'unmapped' if pg is None else 'unreadable'} page {i} "
                        f"reported as {b:#x}, not HMM_DMIRROR_PROT_ERROR",
                        check=[f"assert buf[{i}] == 0xFF, buf"],
                    )
                # (a readable page may still read as ERROR: an unowned device-private
                # PMD entry does, known-bugs 14)
                if readable and b != HMM_DMIRROR_PROT_ERROR and b & HMM_DMIRROR_PROT_WRITE:
                    if not pg.prot & PROT_WRITE:
                        raise FuzzFailure(
                            "errno",
                            f"SNAPSHOT: page {i} reported writable ({b:#x}) in a read-only vma",
                            check=[f"assert not buf[{i}] & 0x02, buf"],
                        )
            self.verify(target, op.addr, n)
        elif op.cmd == "RELEASE":
            self.sweep()
        else:
            self.verify(target, op.addr, n)

    def _partial_write(self, target: ProcState, addr: int, pages, buf: np.ndarray) -> None:
        """A failed WRITE wrote a prefix of the range (dmirror_do_write goes in order)."""
        for i, pg in enumerate(pages):
            if pg is None or pg.cell is None:
                return
            try:
                got = peek_frame(self.k, target.proc, addr + i * PAGE_SIZE)
            except PeekError as e:
                raise FuzzFailure("data", str(e)) from None
            new = buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
            if got is None or not np.array_equal(got, new):
                return
            pg.cell.data = new.tobytes()
