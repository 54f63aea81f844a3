"""docs/reviewing-the-series.md: every command block runs and shows its key lines.

The guide's ```console blocks hold `$ hmmsim ...` lines, each followed by
lines taken from that command's output. Each command runs in-process through
click's CliRunner (a path under /tmp/ is moved into pytest's tmp_path); it
must exit with the status its `# exits N` comment names (0 without one), and
its output must contain the key lines in the order given. A key line `...`
stands for output left out; `...` inside a key line matches any text within
that output line. Blocks fenced as ```console slow run only under -m slow.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from hmmsim.cli import main
from hmmsim.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "reviewing-the-series.md"
ELLIPSIS = "..."


@dataclass
class Step:
    """One `$ hmmsim ...` line of the guide and what its output must show."""

    series: str  # the section's letter, "a".."e" ("" before the first)
    cmd: str  # the command, without the prompt and the comment
    exit_code: int
    keys: list[str]
    slow: bool


def parse_guide(text: str) -> list[Step]:
    """Every command of every ```console block, in order."""
    steps: list[Step] = []
    series = ""
    in_block = False
    slow = False
    for line in text.splitlines():
        if not in_block:
            m = re.match(r"## \(([a-e])\)", line)
            if m:
                series = m.group(1)
            m = re.match(r"```console( slow)?\s*$", line)
            if m:
                in_block, slow = True, bool(m.group(1))
            continue
        if line.startswith("```"):
            in_block = False
        elif line.startswith("$ "):
            cmd, _, comment = line[2:].partition("#")
            m = re.search(r"exits (\d+)", comment)
            steps.append(Step(series, cmd.strip(), int(m.group(1)) if m else 0, [], slow))
        elif line.strip() and line.strip() != ELLIPSIS:
            assert steps and in_block, f"output line before any command: {line!r}"
            steps[-1].keys.append(line.rstrip())
    assert not in_block, "unterminated ```console block"
    return steps


def key_pattern(key: str) -> re.Pattern:
    """A key line as a pattern: its text with `...` matching any text in a line."""
    return re.compile(".*?".join(re.escape(part) for part in key.split(ELLIPSIS)))


def missing_keys(keys: list[str], output: str) -> list[str]:
    """The keys not found in `output`, each searched for after the previous one."""
    pos, missing = 0, []
    for key in keys:
        m = key_pattern(key).search(output, pos)
        if m is None:
            missing.append(key)
        else:
            pos = m.end()
    return missing


STEPS = parse_guide(GUIDE.read_text())


def test_matcher():
    out = "a: FOUND in 4 world(s) (1.7 s); budget x\n  seed 0: run 3\nlast"
    assert not missing_keys(["a: FOUND in 4 world(s) (...); budget x", "  seed 0: run 3"], out)
    assert missing_keys(["  seed 0: run 3", "a: FOUND"], out) == ["a: FOUND"]
    # `...` does not reach across lines
    assert missing_keys(["budget ... seed"], out) == ["budget ... seed"]
    steps = parse_guide(
        "## (b) x\n```console\n$ hmmsim explore s --bug n   # exits 1\nfound\n...\n"
        "  line 2\n```\n```console slow\n$ hmmsim info\n```\n"
    )
    assert [(s.series, s.cmd, s.exit_code, s.keys, s.slow) for s in steps] == [
        ("b", "hmmsim explore s --bug n", 1, ["found", "  line 2"], False),
        ("b", "hmmsim info", 0, [], True),
    ]


def test_guide_covers_every_series():
    """One question per series, each answered by commands that run in the normal suite,
    and every mutant the guide names exists."""
    fast = {s.series for s in STEPS if not s.slow}
    assert fast >= set("abcde"), set("abcde") - fast
    for s in STEPS:
        assert s.cmd.startswith("hmmsim "), s.cmd
        assert s.keys, f"{s.cmd}: no output lines to check"
        for name in re.findall(r"--bugs? (\w+)", s.cmd):
            assert name in MUTANTS, f"{s.cmd}: no mutant {name}"


def _run(step: Step, tmp_path: Path) -> None:
    argv = shlex.split(step.cmd.replace("/tmp/", f"{tmp_path}/"))
    r = CliRunner().invoke(main, argv[1:])
    out = r.output
    assert r.exit_code == step.exit_code, (
        f"{step.cmd}: exit {r.exit_code}, the guide says {step.exit_code}\n{out[-3000:]}"
    )
    missing = missing_keys(step.keys, out)
    assert not missing, f"{step.cmd}: not in the output (in order): {missing}\n{out[-3000:]}"


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(s, id=f"{s.series}-{i}", marks=[pytest.mark.slow] if s.slow else [])
        for i, s in enumerate(STEPS)
    ],
)
def test_guide_command(step: Step, tmp_path):
    _run(step, tmp_path)
