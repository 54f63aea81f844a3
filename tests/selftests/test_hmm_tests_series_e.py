"""hmm-tests under series (e): the case the series adds.

`migrate_on_fault` (the series' hmm-tests case, HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV)
runs on both variants under d+e and under c+e with each conflict resolution.
The 76 pinned cases run under d+e and c+e in test_hmm_tests.py.
"""

from __future__ import annotations

import pytest

from hmmsim.errno import EINVAL
from hmmsim.kconfig import KConfig
from hmmsim.selftests.harness import KSFT_PASS, all_cases, run_case
from hmmsim.selftests.hmm_tests import (
    FIXTURES,
    KNOWN_FAILURES,
    SELFTEST_RAM_BYTES,
    SERIES_FIXTURES,
    make_kernel,
    post_checks,
    series_fixtures,
)

SETS = {"de": ("de", None), "ce-c-first": ("abcde", "c-first"), "ce-e-first": ("abcde", "e-first")}


def _cfg(name):
    features, cr = SETS[name]
    return KConfig(
        features=frozenset(features), ram_bytes=SELFTEST_RAM_BYTES, conflict_resolution=cr
    )


E_CASES = all_cases(SERIES_FIXTURES["e"])


def test_series_case_is_kept_off_the_pinned_suite():
    assert [c.name for c in E_CASES] == [
        "hmm.hmm_device_private.migrate_on_fault",
        "hmm.hmm_device_coherent.migrate_on_fault",
    ]
    assert not {c.name for c in E_CASES} & {c.name for c in all_cases(FIXTURES)}
    assert series_fixtures(_cfg("de")) == SERIES_FIXTURES["e"]
    assert series_fixtures(KConfig()) == ()


def test_the_ioctl_needs_series_e():
    import numpy as np

    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV, hmm_dmirror_cmd
    from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE

    for cfg, want in ((KConfig(features=frozenset("d"), ram_bytes=SELFTEST_RAM_BYTES), -EINVAL),
                      (_cfg("de"), 0)):  # fmt: skip
        k = make_kernel(cfg)
        p = k.spawn()
        fd = p.open("/dev/hmm_dmirror0", O_RDWR)
        a = p.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        buf = np.zeros(4 * 1024, dtype=np.int32)
        cmd = hmm_dmirror_cmd(addr=a, ptr=buf, npages=4)
        assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV, cmd) == want
        if want == 0:  # never touched: faulted in (zero page) and migrated in one walk
            assert cmd.cpages == 4 and not buf.any()


def _check(case, cfg):
    r = run_case(case, lambda: make_kernel(cfg), post_checks)
    known = KNOWN_FAILURES.get(case.name)
    log = "\n".join(r.log)
    if known is not None:
        reason, signature = known
        assert r.exit_code != KSFT_PASS, f"{case.name} passes now ({reason})"
        assert signature in r.message or signature in log, log
        pytest.xfail(reason)
    assert r.exit_code == KSFT_PASS, f"{case.name}: {r.result}: {r.message}\n{log}"


@pytest.mark.parametrize("series", list(SETS))
@pytest.mark.parametrize("case", E_CASES, ids=lambda c: c.name)
def test_migrate_on_fault(case, series):
    _check(case, _cfg(series))
