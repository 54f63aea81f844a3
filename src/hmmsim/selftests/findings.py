"""The findings suite: hmm-tests.c-style cases for the bugs hmmsim found upstream.

Each case is written the way tools/testing/selftests/mm/hmm-tests.c writes
its tests (same harness, same helpers, same fixture setup as its `hmm`
fixture, with the device-private and device-coherent variants), so it can
be proposed upstream as it stands. They live in their own fixture,
`findings`, apart from the hmm-tests.c port: `hmmsim selftest` runs the C's
cases only, `hmmsim findings selftest` runs these.

A case of an open upstream bug (hmmsim.findings.catalog, status "open")
fails on the model today, as it would on a kernel at the pin: it is
reported as XFAIL with the finding as its reason, and
`check_expected_failures` holds the failure to the documented text. The day
a fix is modelled behind a switch (`Finding.fix_switch`, a KConfig feature),
the case is expected to pass with that switch on, and an XFAIL that starts
passing without it is reported as stale: the case flips, nothing hides it.
"""

from __future__ import annotations

import re

from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_FLAG_FAIL_ALLOC, HMM_DMIRROR_FLAGS
from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.selftests import hmm_tests
from hmmsim.selftests.harness import (
    ASSERT_EQ,
    ASSERT_NE,
    EXPECT_EQ,
    EXPECT_NE,
    KSFT_XFAIL,
    KSFT_XPASS,
    MAP_FAILED,
    NULL,
    SIGKILL,
    SKIP,
    TEST_F,
    CaseResult,
    Fixture,
    all_cases,
    current_process,
    fork,
    in_child,
    kill,
    madvise,
    malloc,
    memset,
    mmap,
    user_ptr,
    waitpid,
)
from hmmsim.selftests.hmm_tests import (
    ALIGN,
    hmm_buffer,
    hmm_buffer_free,
    hmm_dmirror_cmd,
    hmm_migrate_sys_to_dev,
    int_mirror,
    ints,
    read_pmd_pagesize,
)
from hmmsim.userspace import WIFSIGNALED, WTERMSIG

#: FIXTURE(findings): hmm-tests.c's `hmm` fixture (its setup opens device
#: variant.device_number, its teardown closes it) under another name, with
#: the same two variants.
findings = Fixture(
    "findings",
    setup=hmm_tests.hmm.setup,
    teardown=hmm_tests.hmm.teardown,
    variants=list(hmm_tests.hmm.variants),
)


@TEST_F(findings)
def migrate_anon_huge_err_forked(_metadata, self, variant):
    """migrate_anon_huge_err with a fork child kept alive (docs/findings.md, first entry).

    The THP is shared with a child that stays alive, so the child's page
    table still maps it by a PMD. The device cannot get a THP (FAIL_ALLOC),
    so the migration falls back to order-0 device pages and splits the
    source folio while it is unmapped. Correct behaviour: the migration
    succeeds, the parent reads its data back, and the child still reads its
    own copy of every word. At the pin the child's PMD migration entry
    survives the split and remove_migration_pte() hits VM_BUG_ON_FOLIO.
    """
    if "d" not in current_process().k.config.features:
        SKIP("device THP migration (series d) is off: the fallback split is not there")
    size = read_pmd_pagesize()

    buffer = hmm_buffer()
    ASSERT_NE(buffer, NULL)

    buffer.fd = -1
    buffer.size = 2 * size
    buffer.mirror = malloc(2 * size)
    ASSERT_NE(buffer.mirror, NULL)
    memset(buffer.mirror, 0xFF, 2 * size)

    old_ptr = mmap(
        NULL, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, buffer.fd, 0
    )
    ASSERT_NE(old_ptr, MAP_FAILED)

    npages = size >> self.page_shift
    map_ = ALIGN(old_ptr, size)
    ret = madvise(map_, size, MADV_HUGEPAGE)
    ASSERT_EQ(ret, 0)
    buffer.ptr = map_

    # Fill the buffer in system memory: one THP, mapped by a PMD.
    i = ints(size)
    ptr = user_ptr(buffer.ptr)
    ptr[i] = i

    # A child shares the THP and stays alive (it spins until SIGKILL), so
    # its PMD keeps mapping the folio while the parent migrates it.
    pid = fork()
    if pid == -1:
        ASSERT_EQ(pid, 0)
    with in_child(pid):
        pass

    # Migrate to the device, forcing the THP allocation to fail.
    ret = hmm_dmirror_cmd(self.fd, HMM_DMIRROR_FLAGS, buffer, HMM_DMIRROR_FLAG_FAIL_ALLOC)
    ASSERT_EQ(ret, 0)
    ret = hmm_migrate_sys_to_dev(self.fd, buffer, npages)
    ASSERT_EQ(ret, 0)
    ASSERT_EQ(buffer.cpages, npages)

    # What the device read.
    ptr = int_mirror(buffer)
    ASSERT_EQ(ptr[i], i)

    # Fault back a single page in the parent.
    ptr = user_ptr(buffer.ptr)
    ASSERT_EQ(ptr[2048], 2048)

    # The child still reads its own copy of every word.
    with in_child(pid):
        cptr = user_ptr(buffer.ptr)
        ASSERT_EQ(cptr[i], i)

    # Kill the child and reap it.
    EXPECT_EQ(0, kill(pid, SIGKILL))
    wpid, status = waitpid(pid, 0)
    EXPECT_EQ(pid, wpid)
    EXPECT_NE(0, WIFSIGNALED(status))
    EXPECT_EQ(SIGKILL, WTERMSIG(status))

    buffer.ptr = old_ptr
    hmm_buffer_free(buffer)


#: TEST_HARNESS_MAIN of the findings suite.
FIXTURES = (findings,)


def _default_features() -> frozenset[str]:
    from hmmsim.selftests.hmm_tests import selftest_config

    return selftest_config().features


def expected_failures(features: frozenset[str] | None = None) -> dict[str, tuple[str, str]]:
    """case name -> (reason, regex of the failure) for every case of an open finding.

    `features`: the kernel's KConfig features (default: the selftest
    kernel's). A finding whose fix switch is among them, or whose buggy
    series is not, expects its cases to pass (or SKIP).
    """
    from hmmsim.findings import FINDINGS

    if features is None:
        features = _default_features()
    out: dict[str, tuple[str, str]] = {}
    for f in FINDINGS.values():
        if not f.selftest or f.expected(features) == "clean":
            continue
        for c in all_cases(FIXTURES):
            if c.test.name == f.selftest:
                out[c.name] = (f"{f.kind} bug, {f.status}: {f.name} ({f.title})", f.match)
    return out


def check_expected_failures(
    results: list[CaseResult], features: frozenset[str] | None = None
) -> list[str]:
    """Problems with the XFAILs of a run: a case that passed although its
    finding is open (the table is stale), or one that failed differently
    from the documented failure."""
    want = expected_failures(features)
    problems = []
    for r in results:
        if r.name not in want:
            continue
        reason, pattern = want[r.name]
        if r.exit_code == KSFT_XPASS:
            problems.append(
                f"{r.name} passed but is expected to fail ({reason}): update "
                "hmmsim/findings/catalog.py (status, fix_switch) and docs/findings.md"
            )
        elif r.exit_code == KSFT_XFAIL and not re.search(pattern, r.message):
            problems.append(
                f"{r.name} failed, but not as documented: {r.message!r} does not match {pattern!r}"
            )
    return problems
