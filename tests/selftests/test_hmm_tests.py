"""hmm-tests.c, case for case: one pytest test per fixture.variant.test.

Each case runs on a fresh Kernel through hmmsim.selftests.harness.run_case;
after the test process exits, the invariant checker runs and any kernel
warning fails the case. A case passes only with KSFT_PASS: a SKIP fails.

Cases listed in KNOWN_FAILURES are expected to fail, and only in the way
described (the failure message must contain the given text); the entry
says whether the model or the upstream test is at fault. A case that
passes, or fails differently, is reported as a failure so that the list
never goes stale.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hmmsim.selftests.harness import KSFT_PASS, all_cases, run_case
from hmmsim.selftests.hmm_tests import (
    FIXTURES,
    KNOWN_FAILURES,
    make_kernel,
    post_checks,
    selftest_config,
)

#: Cases that take more than a minute: the benchmark migrates up to 256 MiB
#: buffers 12 times per THP setting (opt in with `pytest -m slow`).
SLOW = {
    "hmm.hmm_device_private.benchmark_thp_migration",
    "hmm.hmm_device_coherent.benchmark_thp_migration",
}

CASES = all_cases(FIXTURES)


def test_every_case_is_collected():
    """38 TEST_F on two fixtures with two variants each: 76 cases."""
    assert len(CASES) == 76
    assert len({c.name for c in CASES}) == 76
    assert set(KNOWN_FAILURES) <= {c.name for c in CASES}


#: The suite must pass unchanged with the seed series on (they do not change
#: what userspace sees): the pinned configuration (series d only), a+b+c+d,
#: d+e, and all five, as `hmmsim selftest --feature a,b,c,e
#: --conflict-resolution ...` runs them: name -> series added to d.
SERIES_SETS = {"d": (), "abcd": ("a", "b", "c"), "de": ("e",), "abcde": ("a", "b", "c", "e")}

#: With (c) and (e) both on, the conflict resolution alternates from case to
#: case, so that one pass (about a minute on 2 cores) covers both in CI; the
#: complementary pass, every case under the other resolution, is opt-in
#: (`pytest -m slow`).
RESOLUTIONS = ("c-first", "e-first")


def _params():
    for i, case in enumerate(CASES):
        slow = [pytest.mark.slow] if case.name in SLOW else []
        for series, features in SERIES_SETS.items():
            if {"c", "e"} <= set(features):
                for j, cr in enumerate(RESOLUTIONS[i % 2 :] + RESOLUTIONS[: i % 2]):
                    marks = slow if j == 0 else [pytest.mark.slow]
                    yield pytest.param(
                        case, features, cr, id=f"{case.name}-{series}-{cr}", marks=marks
                    )
            else:
                yield pytest.param(case, features, None, id=f"{case.name}-{series}", marks=slow)


@pytest.mark.parametrize(("case", "features", "resolution"), list(_params()))
def test_hmm_selftest(case, features, resolution):
    config = replace(
        selftest_config(),
        features=frozenset({"d", *features}),
        conflict_resolution=resolution,
    )
    r = run_case(case, lambda: make_kernel(config), post_checks)
    log = "\n".join(r.log)
    known = KNOWN_FAILURES.get(case.name)
    if known is not None:
        reason, signature = known
        if r.exit_code == KSFT_PASS:
            pytest.fail(f"{case.name} passes now: remove it from KNOWN_FAILURES ({reason})")
        if signature in r.message or signature in log:
            pytest.xfail(reason)
        pytest.fail(f"{case.name} failed, but not as expected ({signature!r}):\n{log}")
    assert r.exit_code == KSFT_PASS, f"{case.name}: {r.result}: {r.message}\n{log}"
