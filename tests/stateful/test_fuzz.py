"""Stateful fuzzing: a Hypothesis state machine, the seeded driver, the shrinker, replay scripts.

The machine and the driver share one operation vocabulary and one oracle
(hmmsim.testing.fuzz.World): every load, device buffer and touched range is
compared with a shadow of the bytes each process must see, and the invariant
checker runs after every step of the machine. The shrinker and the script
writer are tested on planted model bugs: the fuzzer must find each, shrink
it to a handful of operations, and write a script that reproduces it in a
fresh interpreter (and passes on the unbroken model).

The long run is opt-in: `pytest -m slow tests/stateful`.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hmmsim.bug import KernelBug
from hmmsim.include.mman import MADV_DONTNEED, PROT_NONE, PROT_READ, PROT_WRITE
from hmmsim.testing.fuzz import (
    ARENA_BASE,
    THP_MODES,
    WEIGHTS,
    Fork,
    FuzzFailure,
    Generator,
    Ioctl,
    Load,
    Madvise,
    Mmap,
    Open,
    SeqConfig,
    Spawn,
    Store,
    World,
    execute,
    feature_configs,
    fill,
    peek,
    peek_frame,
    replay_script,
    run_fuzz,
    shrink,
)
from hmmsim.testing.fuzz_cli import fuzz

RW = PROT_READ | PROT_WRITE
PAGE = 4096


# --- the Hypothesis state machine --------------------------------------------------------------
#: Operation kinds, each repeated in proportion to the driver's weights (at least once).
KINDS = [k for k, w in WEIGHTS.items() for _ in range(max(1, round(w)))]


class FuzzMachine(RuleBasedStateMachine):
    """The fuzzer's vocabulary as Hypothesis rules, the invariant checker after every step.

    The rule draws an operation kind (Hypothesis shrinks towards fewer and
    simpler steps) and a seeded Random for its parameters, and asks the shared
    Generator for the operation; the World applies it and checks it against
    the shadow; @invariant runs check_invariants, the warning check and a
    sweep of all memory after every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.gen: Generator | None = None

    @initialize(
        config=st.sampled_from(feature_configs()),
        thp=st.sampled_from(THP_MODES),
    )
    def boot(self, config, thp) -> None:
        fs, cr = config
        self.world = World(SeqConfig(frozenset(fs), cr, thp, ram_bytes=128 << 20))
        self.gen = Generator(self.world, random.Random(0))
        note(self.world.cfg.label())
        self._apply(self.gen.next())

    def _apply(self, op) -> None:
        note(str(op))
        self.world.apply(op)

    @rule(kind=st.sampled_from(KINDS), rnd=st.randoms(use_true_random=True))
    def step(self, kind, rnd):
        """One operation of a kind drawn with the driver's weights (WEIGHTS)."""
        self.gen.rng = rnd
        self._apply(self.gen.make(kind))

    @invariant()
    def invariants_hold(self) -> None:
        if self.world is not None:
            self.world.check()


FuzzMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_fuzz_machine = FuzzMachine.TestCase


# --- the seeded driver ------------------------------------------------------------------------
def test_run_fuzz_small_budget_finds_nothing():
    rep = run_fuzz(1200, seed=0, sequence_steps=200, shrink_seconds=20)
    assert rep.steps == 1200 and rep.sequences == 6
    assert rep.bytes_lost == 0
    assert not rep.violations, rep.violations[0].message


def test_feature_configs_cover_every_buildable_combination():
    configs = feature_configs()
    assert len(configs) == 22
    assert (frozenset({"a", "b", "c", "d", "e"}), "c-first") in configs
    assert all(cr is None for fs, cr in configs if not {"c", "e"} <= fs)
    cfg = SeqConfig(frozenset({"a", "b", "c", "e"}), "e-first", "never")
    from hmmsim.kernel import Kernel

    k = eval(cfg.kernel_source(), {"Kernel": Kernel})
    assert k.config.features == cfg.features and k.config.conflict_resolution == "e-first"


def test_same_seed_same_run():
    a = run_fuzz(150, seed=7, sequence_steps=75)
    b = run_fuzz(150, seed=7, sequence_steps=75)
    assert a.ops == b.ops and a.errnos == b.errnos and a.configs == b.configs


PLAIN = SeqConfig(frozenset({"a", "b", "c", "d"}), None, "madvise")


def _generated(seed: int, steps: int) -> tuple[World, list]:
    w = World(PLAIN)
    gen = Generator(w, random.Random(seed))
    ops = []
    for _ in range(steps):
        ops.append(gen.next())
        w.apply(ops[-1])
    return w, ops


def test_peek_reads_what_a_load_reads():
    w, _ = _generated(3, 250)
    compared = 0
    for ps in list(w.procs.values()):
        for vpn in ps.keys():
            pg = ps.pages[vpn]
            if pg.cpu_fault(write=False) is None:
                a = vpn * PAGE
                assert peek(w.k, ps.proc, a, PAGE) == ps.proc.load(a, PAGE), hex(a)
                compared += 1
    assert compared > 100


def test_bulk_verify_equals_page_by_page_peek():
    w, _ = _generated(5, 250)
    for ps in w.procs.values():
        for vpn in ps.keys():
            w.verify(ps, vpn * PAGE, 1)
            w.verify_slow(ps, vpn * PAGE, 1)
    # corrupt one populated page: both paths must see it, in the same words
    ps, vpn, frame = next(
        (ps, v, f)
        for ps in w.procs.values()
        for v in ps.keys()
        if ps.pages[v].cell is not None
        and (f := peek_frame(w.k, ps.proc, v * PAGE)) is not None
        and f.any()
    )
    frame[17] ^= 0xFF
    msgs = []
    for check in (w.verify, w.verify_slow):
        with pytest.raises(FuzzFailure) as e:
            check(ps, vpn * PAGE, 1)
        assert e.value.kind == "data" and e.value.bytes_lost == 1
        msgs.append(e.value.message)
    assert msgs[0] == msgs[1]


# --- planted bugs: find, shrink, script, replay --------------------------------------------------
def _plant_dontneed_forgets_to_zap(mp) -> str:
    """MADV_DONTNEED leaves the pages mapped: private memory does not read back as zeros."""
    import hmmsim.mm.madvise as madvise

    mp.setattr(madvise, "zap_page_range_single", lambda vma, start, size: None)
    return "import hmmsim.mm.madvise as m; m.zap_page_range_single = lambda *a: None"


def _plant_mprotect_none_bug(mp) -> str:
    """mprotect(PROT_NONE) hits a BUG_ON."""
    import hmmsim.mm.mprotect as mprotect

    orig = mprotect.do_mprotect_pkey

    def broken(mm, start, length, prot):
        if prot == PROT_NONE:
            raise KernelBug("planted: mprotect(PROT_NONE)")
        return orig(mm, start, length, prot)

    mp.setattr(mprotect, "do_mprotect_pkey", broken)
    return (
        "import hmmsim.mm.mprotect as m\n"
        "from hmmsim.bug import KernelBug\n"
        "o = m.do_mprotect_pkey\n"
        "def b(mm, s, n, p):\n"
        "    if p == 0:\n"
        "        raise KernelBug('planted: mprotect(PROT_NONE)')\n"
        "    return o(mm, s, n, p)\n"
        "m.do_mprotect_pkey = b"
    )


def _replay(path, plant: str | None) -> subprocess.CompletedProcess:
    code = (plant + "\n" if plant else "") + (
        f"import runpy; runpy.run_path({str(path)!r}, run_name='__main__')"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "plant, kind, expect",
    [
        (_plant_dontneed_forgets_to_zap, "data", "expect_bytes"),
        (_plant_mprotect_none_bug, "exception", "planted: mprotect(PROT_NONE)"),
    ],
)
def test_planted_bug_is_found_shrunk_and_replayed(monkeypatch, tmp_path, plant, kind, expect):
    source = plant(monkeypatch)
    rep = run_fuzz(3000, seed=1, sequence_steps=150, shrink_seconds=60)
    assert rep.violations, "the planted bug was not found"
    v = rep.violations[0]
    assert v.signature.startswith(kind), v.signature
    assert v.reproduced and len(v.ops) <= 6, [str(op) for op in v.ops]
    path = tmp_path / "replay.py"
    path.write_text(v.script)
    broken = _replay(path, source)
    assert broken.returncode != 0, broken.stdout
    assert expect in broken.stderr, broken.stderr[-2000:]
    monkeypatch.undo()
    fixed = _replay(path, None)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "no failure reproduced" in fixed.stdout


def test_shrink_removes_everything_unrelated(monkeypatch):
    _plant_dontneed_forgets_to_zap(monkeypatch)
    cfg = SeqConfig()
    a, b = ARENA_BASE, ARENA_BASE + 0x100000
    ops = [Spawn(0), Mmap(0, b, 8, RW), Open(0, 0, 2)]
    ops += [Store(0, b + i * 100, 50, 10 + i) for i in range(10)]
    ops += [Mmap(0, a, 4, RW), Ioctl(0, 0, "MIGRATE_TO_DEV", b, 8), Store(0, a + 8, 16, 1)]
    ops += [Load(0, b + 300, 40), Madvise(0, a, 4, MADV_DONTNEED), Load(0, a, 64)]
    r = execute(cfg, ops)
    assert r.failure is not None and r.failure.kind == "data"
    small = shrink(cfg, ops, r.failure.signature)
    assert [type(op).__name__ for op in small] == ["Spawn", "Mmap", "Store", "Madvise"]
    assert execute(cfg, small).failure.signature == r.failure.signature


def test_script_of_a_passing_sequence_runs_clean(tmp_path):
    _, ops = _generated(11, 60)
    path = tmp_path / "replay.py"
    path.write_text(replay_script(PLAIN, ops))
    r = _replay(path, None)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no failure reproduced" in r.stdout


def test_fill_is_recognisable():
    data = fill(0x1234, 20)
    assert len(data) == 20
    assert int.from_bytes(data[8:16], "little") == (0x1234 << 32) | 1


# --- the command ---------------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(fuzz, list(args), prog_name="hmmsim fuzz")


def test_cli_json_report(tmp_path):
    r = _cli("--steps", "120", "--seed", "4", "--json", "--out", str(tmp_path / "r.py"))
    data = json.loads(r.output)
    for key in ("steps", "sequences", "violations", "bytes_lost", "steps_per_second"):
        assert key in data
    assert data["steps"] <= 120 and data["features"].startswith("sampled")
    assert r.exit_code == (1 if data["violations"] else 0)


def test_cli_refuses_c_and_e_without_a_resolution():
    r = _cli("--steps", "5", "--feature", "c", "--feature", "a", "--feature", "b", "--feature", "e")
    assert r.exit_code == 2
    assert "--conflict-resolution" in r.output and "Traceback" not in r.output
    r = _cli("--steps", "5", "--feature", "c")
    assert r.exit_code == 2 and "series (c) needs" in r.output


def test_cli_violation_writes_a_replay_script(monkeypatch, tmp_path):
    source = _plant_dontneed_forgets_to_zap(monkeypatch)
    out = tmp_path / "found.py"
    r = _cli(
        "--steps", "3000", "--seed", "1", "--sequence-steps", "150",
        "--shrink-seconds", "30", "--out", str(out),
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "violations   1" in r.output and f"replay: python {out}" in r.output
    assert out.exists()
    assert _replay(out, source).returncode != 0


# --- the long run (opt-in) -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_long_fuzz_run(seed):
    rep = run_fuzz(200_000, seed=seed)
    assert rep.bytes_lost == 0
    assert not rep.violations, "\n".join(v.message for v in rep.violations)


def test_shared_thp_migration_hazard_is_predicted_and_skipped():
    """The fuzzer steps around the suspected upstream VM_BUG_ON (a THP shared
    with a fork child, migrated with order-0 fallback): the predicate sees a
    PMD-mapped THP with mapcount 2, not one with mapcount 1, and the World
    skips the ioctl instead of raising."""
    w = World(SeqConfig(frozenset({"d"}), None, "always"))
    w.apply(Spawn(0))
    w.apply(Mmap(0, ARENA_BASE, 512, PROT_READ | PROT_WRITE))
    w.apply(Store(0, ARENA_BASE + 5, 12, 1))
    w.apply(Open(0, 0, 3))
    assert not w.shared_thp_migrate_hazard(0, "MIGRATE_TO_DEV", ARENA_BASE, 512)
    w.apply(Fork(0, 1))
    assert w.shared_thp_migrate_hazard(0, "MIGRATE_TO_DEV", ARENA_BASE, 512)
    assert w.shared_thp_migrate_hazard(0, "MIGRATE_TO_DEV", ARENA_BASE + 7 * PAGE, 1)
    assert not w.shared_thp_migrate_hazard(0, "MIGRATE_TO_SYS", ARENA_BASE, 512)
    w.apply(Ioctl(0, 0, "MIGRATE_TO_DEV", ARENA_BASE, 512))
    assert w.stats["skipped_upstream_hazard"] == 1
    w.check()
