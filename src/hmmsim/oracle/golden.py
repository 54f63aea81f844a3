"""Goldens: the guest's console transcript -> NAME.golden / NAME.log, and comparison.

Pure text processing (no QEMU): the unit tests run it on sample transcripts
and kernel logs. The guest's /init (hmmsim.oracle.initramfs) prints, per
scenario I::

    @@HMMSIM BEGIN I
    |<runner stdout line>          (each line prefixed with '|'; an unfinished
    |<...>                          last line ends with the '|' line of an added
                                    newline, see below)
    @@HMMSIM RC I <exit status of the runner>
    %<runner stderr line>
    @@HMMSIM LOG I
    ><kernel log line>             (dmesg -c after the run)
    @@HMMSIM END I

The runner's stdout is printed as `sed 's/^/|/'` of the file plus one extra
newline, so the transcript's last '|' line is the runner's unfinished line
(empty when the runner ended its last line).

While the runner runs it also mirrors its lines to the console ("~> LINE OP"
when an operation starts, "~= LINE OP RESULT" when it ends), and the kernel
prints an oops there as it happens. For a run that never reaches END (the
process hung after an oops, or the guest died) those are all there is: the
"~=" lines become the output, a "~>" without its "~=" the unfinished line, and
the other console lines the kernel log. Mirror lines are matched by
"LINE OP": a "~>" whose "~=" never came is the op the process died in, kept
at its place (a held child's line comes before its parent's `fork = held`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MARK = "@@HMMSIM"

#: A runner line whose operation never finished: "LINE OP " and nothing after it.
PARTIAL_RE = re.compile(r"^(\d+) (\S+) $")
_STAMP_RE = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_RIP_RE = re.compile(r"\bRIP: [0-9a-f]{4}:([A-Za-z0-9_.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
_WARN_RE = re.compile(r"^WARNING: CPU: \d+ PID: \d+ at (\S+) ([A-Za-z0-9_.$]+)\+0x")
_WARN_SHORT_RE = re.compile(r"^WARNING: (\S+) at ([A-Za-z0-9_.$]+)\+0x")
_KBUG_RE = re.compile(r"^kernel BUG at (\S+?)!?$")
_BUG_RE = re.compile(r"^BUG: (.*)$")
_OOPS_RE = re.compile(r"^Oops: ")
_PANIC_RE = re.compile(r"^Kernel panic - not syncing: (.*)$")


@dataclass
class Run:
    """One scenario's run in the guest, as read from the console."""

    index: int
    out: list[str] = field(default_factory=list)  # complete runner lines
    partial: str | None = None  # the unfinished last line ("LINE OP "), if any
    rc: int | None = None
    stderr: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    complete: bool = False  # END seen
    # the mirror, in start order: [prefix "LINE OP", full line or None if unfinished]
    mirror: list[list] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # other console lines meanwhile
    status: str = "ok"  # ok | hung | crashed (set by the driver)


def strip_stamp(line: str) -> str:
    """A kernel log line without its "[   1.234567] " timestamp."""
    return _STAMP_RE.sub("", line)


def parse_transcript(text: str) -> dict[int, Run]:
    """The runs found in a console transcript (serial output, CRLF or LF)."""
    runs: dict[int, Run] = {}
    cur: Run | None = None
    section = None
    out_lines: list[str] = []
    for raw in text.replace("\r", "").split("\n"):
        if raw.startswith(MARK + " "):
            parts = raw.split()
            what = parts[1] if len(parts) > 1 else ""
            idx = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            if what == "BEGIN" and idx is not None:
                cur = runs.setdefault(idx, Run(idx))
                section, out_lines = "out", []
            elif cur is not None and idx == cur.index:
                if what == "RC":
                    _finish_out(cur, out_lines)
                    cur.rc = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
                    section = "err"
                elif what == "LOG":
                    section = "log"
                elif what == "END":
                    cur.complete = True
                    cur, section = None, None
            continue
        if cur is None:
            continue
        if raw.startswith("~>"):
            cur.mirror.append([raw[2:], None])
        elif raw.startswith("~="):
            for m in reversed(cur.mirror):
                if m[1] is None and raw[2:].startswith(m[0] + " "):
                    m[1] = raw[2:]
                    break
        elif section == "out" and raw.startswith("|"):
            out_lines.append(raw[1:])
        elif section == "err" and raw.startswith("%"):
            cur.stderr.append(raw[1:])
        elif section == "log" and raw.startswith(">"):
            cur.log.append(strip_stamp(raw[1:]))
        elif raw.strip():
            cur.console.append(strip_stamp(raw))
    if cur is not None and not cur.complete:
        # the guest hung or died inside the run: the mirror and the console
        if cur.rc is None:
            # an op that started and never ended (a child's, maybe, with its
            # parent's lines after it) stays in place as "LINE OP "
            cur.out = [text if text is not None else prefix + " " for prefix, text in cur.mirror]
            cur.partial = None
        if not cur.log:
            cur.log = list(cur.console)
    return runs


def _finish_out(run: Run, lines: list[str]) -> None:
    if lines:
        last = lines.pop()  # the added newline's line: the unfinished line, or ""
        run.partial = last or None
    run.out = lines


@dataclass
class Event:
    kind: str  # OOPS | WARNING | BUG | PANIC
    what: str  # function, FILE:LINE or text

    def line(self) -> str:
        return f"! {self.kind} {self.what}"


def log_events(log: list[str]) -> list[Event]:
    """The kernel events of a scenario's log, in order.

    `Oops: ...` -> OOPS FUNC (the function of the next `RIP:` line, as the
    kernel names it after inlining); `WARNING: ... at FILE:LINE FUNC+0x..` ->
    WARNING FUNC; `kernel BUG at FILE:LINE!` -> BUG FILE:LINE (an OOPS
    follows it, as in the log); other `BUG: TEXT` reports (bad page state,
    bad rss counter, ...) -> BUG TEXT without the process name and numbers;
    `Kernel panic - not syncing: TEXT` -> PANIC TEXT.
    """
    events: list[Event] = []
    want_rip: Event | None = None
    for raw in log:
        line = strip_stamp(raw).strip()
        m = _WARN_RE.match(line) or _WARN_SHORT_RE.match(line)
        if m:
            events.append(Event("WARNING", m.group(2)))
            want_rip = None
            continue
        m = _KBUG_RE.match(line)
        if m:
            events.append(Event("BUG", m.group(1)))
            continue
        if _OOPS_RE.match(line):
            ev = Event("OOPS", "?")
            events.append(ev)
            want_rip = ev
            continue
        m = _PANIC_RE.match(line)
        if m:
            events.append(Event("PANIC", _bug_text(m.group(1))))
            continue
        m = _BUG_RE.match(line)
        if m:
            text = m.group(1)
            # "BUG: unable to handle page fault ...", "BUG: kernel NULL pointer
            # dereference ..." head an Oops: the OOPS event names it.
            if not text.startswith(("unable to handle", "kernel NULL pointer")):
                events.append(Event("BUG", _bug_text(text)))
            continue
        m = _RIP_RE.search(line)
        if m and want_rip is not None:
            want_rip.what = m.group(1)
            want_rip = None
    return events


def _bug_text(text: str) -> str:
    text = re.split(r" in process | pfn:| at 0x|:\s*$", text)[0]
    text = re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", text)
    return " ".join(text.split())


def oops_function(log: list[str]) -> str | None:
    """The function of the first oops in the log, or None."""
    for ev in log_events(log):
        if ev.kind == "OOPS":
            return ev.what
    return None


def golden_lines(run: Run) -> list[str]:
    """The golden of one run: the operation lines, then the `! ...` event lines.

    The first unfinished line ("LINE OP ") is the operation the process died
    in: completed as `LINE OP OOPS FUNC` when the log has an oops (and the
    lines after it, a parent's report of its child's death, are dropped: the
    scenario ends there), `LINE OP HUNG` for a run that never finished, else
    `LINE OP KILLED`.
    """
    lines = list(run.out)
    if run.partial is not None:
        lines.append(run.partial)
    events = log_events(run.log)
    func = next((e.what for e in events if e.kind == "OOPS"), None)
    for i, ln in enumerate(lines):
        if PARTIAL_RE.match(ln):
            if func is not None:
                tail = f"OOPS {func}"
            elif run.status == "hung":
                tail = "HUNG"
            else:
                tail = "KILLED"
            lines = lines[:i] + [ln + tail]
            break
    out = lines + [e.line() for e in events]
    # a process killed by an oops often hangs in exit (a mutex it held): the
    # oops is the scenario's end, the hang its consequence
    if func is None and run.status == "hung":
        out.append("! HUNG")
    elif func is None and run.status == "crashed":
        out.append("! CRASHED")
    return out


def split_golden(text: str) -> tuple[list[str], list[str]]:
    """(operation lines, `! ` event lines) of a golden or a model output."""
    ops, events = [], []
    for ln in text.splitlines():
        if not ln.strip():
            continue
        (events if ln.startswith("! ") else ops).append(ln)
    return ops, events


@dataclass
class Comparison:
    name: str
    agree: bool
    ops_agree: bool
    events_agree: bool
    first_line: int | None = None  # 1-based index into the op lines
    kernel: str | None = None
    model: str | None = None
    kernel_events: list[str] = field(default_factory=list)
    model_events: list[str] = field(default_factory=list)


def compare(name: str, golden: str, model: str) -> Comparison:
    """Compare a golden with the model's output: op lines, then events as a multiset."""
    kops, kev = split_golden(golden)
    mops, mev = split_golden(model)
    first = None
    for i in range(max(len(kops), len(mops))):
        a = kops[i] if i < len(kops) else "<end>"
        b = mops[i] if i < len(mops) else "<end>"
        if a != b:
            first = i
            break
    ops_ok = first is None
    ev_ok = sorted(kev) == sorted(mev)
    c = Comparison(name, ops_ok and ev_ok, ops_ok, ev_ok, kernel_events=kev, model_events=mev)
    if first is not None:
        c.first_line = first + 1
        c.kernel = kops[first] if first < len(kops) else "<end>"
        c.model = mops[first] if first < len(mops) else "<end>"
    return c
