"""The series (e) walk fuzzer with devices: device-private and coherent sources
and destinations, REQ_FAULT with REQ_MIGRATE, under d+e and c+e with each
conflict resolution. A longer campaign is opt-in (pytest -m slow)."""

import pytest

from hmmsim.testing.walk_fuzz import run_walk_fuzz

CONFIGS = [("de", None), ("abcde", "c-first"), ("abcde", "e-first")]


@pytest.mark.parametrize("features,cr", CONFIGS)
def test_device_walk_fuzz_is_clean(features, cr):
    rep = run_walk_fuzz(
        3, 1, features=frozenset(features), conflict_resolution=cr, devices=True, rounds=8
    )
    assert not rep.failure, rep.failure
    assert rep.runs == 3 and rep.rounds == 24
    # every kind of round ran, and migrate-on-fault moved whole windows
    assert {"walk", "on_fault", "to_sys", "cpu"} <= set(rep.kinds)
    assert rep.kinds.get("on_fault:0", 0) > 0 and rep.migrated > 0


@pytest.mark.slow
@pytest.mark.parametrize("features,cr", CONFIGS)
def test_device_walk_fuzz_campaign(features, cr):
    for seed in range(3):
        rep = run_walk_fuzz(
            30, seed, features=frozenset(features), conflict_resolution=cr, devices=True, rounds=8
        )
        assert not rep.failure, f"seed {seed}: {rep.failure}"


def test_the_fuzzer_sees_a_driver_that_forgets_its_mirror():
    """The oracle has teeth: a 'driver' that migrates its own coherent pages to
    RAM under its own owner but does not drop its device mappings is caught by
    the invariant checker (mirror maps a page the CPU no longer maps)."""
    import hmmsim.testing.walk_fuzz as wf

    class Forgetful:
        def __init__(self, dev):
            self.dev = dev

        def __getattr__(self, name):
            return getattr(self.dev, name)

        def dmirror_do_update(self, start, end):
            pass

    real = wf._round

    def forgetful_round(k, p, base, rng, dev=None, rep=None):
        return real(k, p, base, rng, Forgetful(dev) if dev is not None else None, rep)

    wf._round = forgetful_round
    try:
        rep = run_walk_fuzz(30, 1, devices=True, rounds=8)
    finally:
        wf._round = real
    assert "mirror" in rep.failure and "but the CPU has" in rep.failure
