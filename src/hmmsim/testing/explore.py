"""Deterministic concurrency: simulated threads, schedules, and exhaustive exploration.

Simulated threads (CPU threads of processes, device handlers, an eviction
worker) are OS threads that run strictly one at a time: every lock acquire or
release, every wait, every notifier callback and every fault calls the
Kernel's scheduler hook, and only there may the `Explorer` switch threads.
A schedule is the list of choices made at those points, so any interleaving
can be replayed exactly.

- `Explorer(k)` runs the threads added with `spawn()` under a policy:
  `RandomPolicy(seed)`, `ReplayPolicy(choices)`, or the exhaustive search in
  `explore()` (depth-first over all schedules with at most K preemptions, the
  CHESS bound: switching away from a thread that could go on counts as one).
- A thread that waits (folio lock, mmap_lock, notifier sequence) is blocked
  until another thread releases that object. No runnable thread while some
  are blocked is a deadlock; a run longer than the step bound is a livelock,
  and so is a kernel busy-retry (a "retry" point: a loop that goes again at
  once, without sleeping) reached `spin_limit` times in a row while no other
  thread ran: on a kernel without preemption nothing the retry waits for can
  change then. All are reported with the interleaving as a readable trace.
- `Sequencer` scripts an interleaving in a test: "run A until its 2nd
  folio lock, then B to completion, then A".

Nothing here is kernel code; the kernel's waits and wake-ups are modelled by
the scheduler hook calls in hmmsim.locking and hmmsim.mm.
"""

from __future__ import annotations

import random
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from hmmsim.bug import KernelBug
from hmmsim.locking import Livelock, Scheduler

READY, BLOCKED, DONE = "ready", "blocked", "done"


class Deadlock(KernelBug):
    """No thread can run, but some wait."""


__all__ = [
    "Deadlock",
    "Explorer",
    "Livelock",
    "RandomPolicy",
    "ReplayPolicy",
    "Sequencer",
    "Until",
    "explore",
]


class SimThread:
    """One simulated thread: a name, a body, its state and the object it waits on."""

    def __init__(self, explorer: Explorer, name: str, fn: Callable[[], object]) -> None:
        self.explorer = explorer
        self.name = name
        self.fn = fn
        self.state = READY
        self.waiting_on: object = None
        self.why = ""
        self.error: BaseException | None = None
        self.error_tb = ""
        self.result = None
        self.resume = threading.Semaphore(0)
        self.spins = 0  # consecutive busy-retries with no other thread run between
        self.spin_mark: tuple = ()
        self.os = threading.Thread(target=self._main, name=f"sim-{name}", daemon=True)

    def __repr__(self) -> str:
        return f"<SimThread {self.name} {self.state}>"

    def _main(self) -> None:
        self.resume.acquire()
        try:
            if not self.explorer.aborting:
                self.result = self.fn()
        except _Abort:
            pass
        except BaseException as e:  # noqa: BLE001 - reported by the explorer
            self.error = e
            self.error_tb = traceback.format_exc()
        self.state = DONE
        self.explorer._back.release()


class _Abort(BaseException):
    """Unwinds a simulated thread when the run is abandoned (deadlock, livelock)."""


@dataclass
class Step:
    thread: str
    kind: str
    what: str


@dataclass
class RunResult:
    """Outcome of one schedule: the choices, the trace, and what went wrong."""

    choices: list[int]
    trace: list[Step]
    error: str | None = None
    error_kind: str | None = None
    decisions: list[tuple[list[str], int, int]] = field(default_factory=list)

    def format_trace(self, last: int = 40) -> str:
        lines = [f"  {s.thread:>10}  {s.kind:<8} {s.what}" for s in self.trace[-last:]]
        skipped = len(self.trace) - last
        head = [f"  ... {skipped} earlier steps"] if skipped > 0 else []
        return "\n".join(head + lines)


class Explorer(Scheduler):
    """Runs simulated threads one at a time, switching only at scheduler points."""

    def __init__(
        self, k, policy: Callable | None = None, max_steps: int = 20000, spin_limit: int = 64
    ) -> None:
        self.k = k
        self.spin_limit = spin_limit
        self.switches = 0  # times a different thread was resumed
        self.policy = policy or (lambda ex, options, current: 0)
        self.max_steps = max_steps
        self.threads: list[SimThread] = []
        self._by_os: dict[int, SimThread] = {}
        self._back = threading.Semaphore(0)
        self.trace: list[Step] = []
        self.choices: list[int] = []
        self.decisions: list[tuple[list[str], int, int]] = []
        self.current: SimThread | None = None
        self.aborting = False
        self.preemptions = 0
        self._last_kind = ""

    def spawn(self, name: str, fn: Callable[[], object]) -> SimThread:
        t = SimThread(self, name, fn)
        self.threads.append(t)
        return t

    # --- the scheduler hook --------------------------------------------------------------
    def _me(self) -> SimThread | None:
        return self._by_os.get(threading.get_ident())

    def point(self, kind: str, obj: object) -> None:
        me = self._me()
        if me is None:
            return
        if kind == "release":
            for t in self.threads:
                if t.state == BLOCKED and _same(t.waiting_on, obj):
                    t.state = READY
        elif kind == "retry":
            same = me.spin_mark == (self.switches, obj)
            me.spins = me.spins + 1 if same else 1
            me.spin_mark = (self.switches, obj)
            if me.spins >= self.spin_limit:
                raise Livelock(
                    f"livelock: {me.name}: {_describe(obj)}, {me.spins} busy-retries in a row "
                    "while no other thread ran (it spins on something only another "
                    "thread can change, and never sleeps)"
                )
        self._yield(me, kind, obj)

    def wait(self, obj: object, why: str) -> None:
        me = self._me()
        if me is None:
            raise KernelBug(f"deadlock: {why} ({obj!r}) outside a simulated thread")
        me.state = BLOCKED
        me.waiting_on = obj
        me.why = why
        self._yield(me, "wait", obj)

    def _yield(self, me: SimThread, kind: str, obj: object) -> None:
        self._last_kind = kind
        self.trace.append(Step(me.name, kind, _describe(obj)))
        self._back.release()
        me.resume.acquire()
        if self.aborting:
            raise _Abort()

    # --- the controller ------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every thread to completion under the policy."""
        prev_sched = self.k.sched
        self.k.sched = self
        for t in self.threads:
            t.os.start()
            self._by_os[t.os.ident] = t
        result = RunResult(choices=self.choices, trace=self.trace, decisions=self.decisions)
        steps = 0
        try:
            while True:
                runnable = [t for t in self.threads if t.state == READY]
                if not runnable:
                    blocked = [t for t in self.threads if t.state == BLOCKED]
                    if blocked:
                        desc = "; ".join(f"{t.name} waits: {t.why}" for t in blocked)
                        raise Deadlock(f"deadlock: {desc}")
                    break
                steps += 1
                if steps > self.max_steps:
                    raise Livelock(f"livelock: no completion within {self.max_steps} steps")
                cur = self.current if self.current in runnable else None
                if cur is not None and self._last_kind == "yield" and len(runnable) > 1:
                    # a yield point (a user access being retried): another thread
                    # runs next, as a time slice would let it; not a preemption
                    runnable = [t for t in runnable if t is not cur]
                    cur = None
                options = ([cur] + [t for t in runnable if t is not cur]) if cur else runnable
                idx = self.policy(self, options, cur) if len(options) > 1 else 0
                if len(options) > 1:
                    self.choices.append(idx)
                    self.decisions.append(([t.name for t in options], idx, int(cur is not None)))
                chosen = options[idx]
                if cur is not None and chosen is not cur:
                    self.preemptions += 1
                if chosen is not self.current:
                    self.switches += 1
                self.current = chosen
                if chosen.waiting_on is not None:
                    chosen.waiting_on = None
                chosen.resume.release()
                self._back.acquire()
            for t in self.threads:
                if t.error is not None:
                    result.error = f"{t.name}: {type(t.error).__name__}: {t.error}"
                    result.error_kind = type(t.error).__name__
                    result.trace_tb = t.error_tb
                    break
        except (Deadlock, Livelock) as e:
            result.error = str(e)
            result.error_kind = type(e).__name__
            self._abort()
        finally:
            self.k.sched = prev_sched
        return result

    def _abort(self) -> None:
        self.aborting = True
        for t in self.threads:
            if t.state != DONE:
                t.resume.release()
                self._back.acquire()


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and a == b
    except Exception:  # noqa: BLE001
        return False


def _describe(obj: object) -> str:
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return name
    r = repr(obj)
    return r if len(r) < 80 else r[:77] + "..."


# --- policies -------------------------------------------------------------------------------
class RandomPolicy:
    """Seeded random choice at every point (a preemption with probability p)."""

    def __init__(self, seed: int, p_switch: float = 0.3) -> None:
        self.rng = random.Random(seed)
        self.p = p_switch

    def __call__(self, ex: Explorer, options: list, cur) -> int:
        if cur is not None and self.rng.random() >= self.p:
            return 0
        return self.rng.randrange(len(options))


class ReplayPolicy:
    """Follow recorded choices, then keep the current thread (index 0)."""

    def __init__(self, choices: list[int]) -> None:
        self.choices = list(choices)
        self.i = 0

    def __call__(self, ex: Explorer, options: list, cur) -> int:
        if self.i < len(self.choices):
            c = self.choices[self.i]
            self.i += 1
            return min(c, len(options) - 1)
        return 0


@dataclass(frozen=True)
class Until:
    """A Sequencer stop: the thread's `count`-th scheduler point of `kind`
    whose object description contains `what` (the thread stops *at* it)."""

    kind: str
    what: str = ""
    count: int = 1


class Sequencer:
    """A policy that follows a script of (thread name, Until or None) steps.

    Each step runs the named thread until its Until point (counted from the
    start of the step) or, with None, until it finishes or blocks; then the
    next step starts. A scripted thread that cannot run (blocked) ends its
    step. After the script, the current thread keeps running. Example: "run
    A until its 2nd folio-lock acquire, then B to completion, then A" is
    ``Sequencer(("A", Until("acquire", "page", 2)), ("B", None), ("A", None))``.
    """

    def __init__(self, *script: tuple[str, Until | None]) -> None:
        self.script = list(script)
        self.i = 0
        self.mark = 0  # trace length when the current step started

    def __call__(self, ex: Explorer, options: list, cur) -> int:
        names = [t.name for t in options]
        while self.i < len(self.script):
            name, until = self.script[self.i]
            t = next((t for t in ex.threads if t.name == name), None)
            if t is None:
                raise ValueError(f"Sequencer: no thread named {name!r}")
            done = name not in names
            if until is not None and not done:
                hits = sum(
                    1
                    for s in ex.trace[self.mark :]
                    if s.thread == name and s.kind == until.kind and until.what in s.what
                )
                done = hits >= until.count
            if not done:
                return names.index(name)
            self.i += 1
            self.mark = len(ex.trace)
        return 0


@dataclass
class ExploreReport:
    scenario: str
    schedules: int = 0
    violations: list[RunResult] = field(default_factory=list)
    complete: bool = True
    preemptions: int = 0

    def as_dict(self) -> dict:
        return {
            "scenario": self.scenario,
            "preemptions": self.preemptions,
            "schedules": self.schedules,
            "complete": self.complete,
            "violations": [
                {
                    "error": v.error,
                    "kind": v.error_kind,
                    "choices": v.choices,
                    "trace": [f"{s.thread} {s.kind} {s.what}" for s in v.trace[-30:]],
                }
                for v in self.violations
            ],
        }


def explore(
    make_run: Callable[[Callable], RunResult],
    preemptions: int = 2,
    max_schedules: int = 2000,
    stop_on_first: bool = False,
    name: str = "scenario",
) -> ExploreReport:
    """Depth-first over every schedule with at most `preemptions` preemptions.

    make_run(policy) builds a fresh world, runs it under `policy` and returns
    the RunResult (with its checks folded into .error). Choices past a forced
    prefix keep the current thread; the search then revisits each decision
    with every other option whose preemption count stays within budget.
    """
    report = ExploreReport(scenario=name, preemptions=preemptions)
    stack: list[list[int]] = [[]]
    seen: set[tuple[int, ...]] = set()
    while stack:
        if report.schedules >= max_schedules:
            report.complete = False
            break
        prefix = stack.pop()
        if tuple(prefix) in seen:
            continue
        seen.add(tuple(prefix))
        res = make_run(ReplayPolicy(prefix))
        report.schedules += 1
        if res.error:
            report.violations.append(res)
            if stop_on_first:
                break
        # preemptions used by the forced prefix, per decision
        used = 0
        for depth, (opts, idx, had_cur) in enumerate(res.decisions):
            if depth < len(prefix):
                if had_cur and idx != 0:
                    used += 1
                continue
            for alt in range(1, len(opts)):
                cost = used + (1 if had_cur else 0)
                if cost <= preemptions:
                    stack.append(res.choices[:depth] + [alt])
            # beyond the prefix the run kept the current thread (idx 0)
    return report
