"""README.md "What can I do with this": every recipe command runs as written.

The commands are read from the section's ```sh blocks. `hmmsim ...` lines run
through click's CliRunner, `python FILE` lines in a subprocess from the
repository root; a path under /tmp/ is moved into pytest's tmp_path. A
line whose comment says `exits N` must exit N (others 0), and KEY_LINES says
what its output must show.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from hmmsim.cli import main

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## What can I do with this"

#: what the output of a recipe command (matched by its start) must contain
KEY_LINES = {
    "hmmsim selftest": ["# PASSED: 4 / 4 tests passed."],
    "hmmsim demo device --feature b --diff": [
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE",
        "+    page 0           0x7effffffc000: 0xcffff80004000002",
    ],
    "hmmsim explain 0xcffff80004000002 --feature b": [
        "pte      swap PTE: SOFTLEAF_DEVICE_PRIVATE_WRITE pfn=0x3fffdffff"
    ],
    "hmmsim fuzz --bug exclusive_drops_mapcount": ["violations   1", "_mapcount says"],
    "python /tmp/finding.py": ["_mapcount says 0 PTE mappings"],
    "hmmsim findings replay": ["kernel-bug (as documented: kernel-bug", "VM_BUG_ON_FOLIO"],
    "python fuzz-findings/migrate-shared-thp-fallback-remaps-child-pmd.py": ["VM_BUG_ON_FOLIO"],
    "hmmsim sim stream": ["evictions (chunks / pages)", "data errors"],
}


def recipe_lines() -> list[tuple[str, str]]:
    """(command, comment) of every line in the section's sh blocks."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end > 0 else len(text)]
    out = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if not line.strip():
                continue
            cmd, _, comment = line.partition("#")
            out.append((cmd.strip(), comment.strip()))
    return out


def test_readme_has_the_recipes_and_the_picture():
    cmds = [c for c, _ in recipe_lines()]
    assert any(c.startswith("hmmsim selftest") and "--feature" in c for c in cmds)
    assert any(c.startswith("hmmsim fuzz --bug") for c in cmds)
    assert any(c.startswith("python fuzz-findings/") for c in cmds)
    text = (ROOT / "README.md").read_text()
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / img).is_file(), img


def test_readme_recipes_run(tmp_path):
    lines = recipe_lines()
    assert len(lines) >= 5
    checked = set()
    for cmd, comment in lines:
        m = re.search(r"exits (\d+)", comment)
        want = int(m.group(1)) if m else 0
        run_cmd = cmd.replace("/tmp/", f"{tmp_path}/")
        argv = shlex.split(run_cmd)
        if argv[0] == "hmmsim":
            r = CliRunner().invoke(main, argv[1:])
            code, output = r.exit_code, r.output
        else:
            assert argv[0] == "python", cmd
            p = subprocess.run(
                [sys.executable, *argv[1:]],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            code, output = p.returncode, p.stdout + p.stderr
        assert code == want, f"{cmd}: exit {code}, README says {want}\n{output[-2000:]}"
        for prefix, keys in KEY_LINES.items():
            if cmd.startswith(prefix):
                checked.add(prefix)
                for key in keys:
                    assert key in output, f"{cmd}: {key!r} not in output\n{output[-2000:]}"
    assert checked == set(KEY_LINES), set(KEY_LINES) - checked
