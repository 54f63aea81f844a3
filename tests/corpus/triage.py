"""Print KNOWN_DIVERGENCES for test_corpus.py from the goldens and today's model.

    python tests/corpus/triage.py > /tmp/known.py

Each scenario whose model output differs from its golden (under --kernel
6.12) gets a reason: the cause where a rule below recognises the first
divergent line, then that line as the kernel and the model print it. Review
the output before pasting it into test_corpus.py: a reason is a claim.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hmmsim.oracle.golden import compare
from hmmsim.scenario import run_text, scenario_config

CORPUS = Path(__file__).parent

#: (op, regex on the kernel's line, regex on the model's line) -> cause
RULES = [
    (
        "ioctl",
        r"ioctl = -EBUSY",
        r"",
        "EXCLUSIVE: 6.12's dmirror_exclusive ends with -EBUSY when a window is not all "
        "made exclusive (make_device_exclusive_range); the model returns mainline's errno",
    ),
    ("ioctl", r"HUNG", r"", "the real kernel ran past the oracle's time limit (TCG): no answer"),
    (
        "madvise",
        r"madvise = -EINVAL",
        r"madvise = (0|-ENOMEM)",
        "MADV_FREE/REMOVE refused by the kernel for this vma (madvise_free_single_vma: "
        "-EINVAL unless vma_is_anonymous; the first vma's error is returned before a "
        "later hole's -ENOMEM); the model accepts it or reports the hole",
    ),
    ("madvise", r"", r"", "madvise: the errno or result differs"),
    ("mremap", r"", r"", "mremap: the result differs"),
]


def cause(src_line: str, k: str, m: str) -> str:
    op = src_line.split()[0] if src_line.split() else "?"
    for rop, kre, mre, why in RULES:
        if op == rop and re.search(kre, k) and re.search(mre, m):
            return why
    return f"{op}: differs"


def main() -> int:
    cfg, used = scenario_config(kernel="6.12")
    out = {}
    for scn in sorted(CORPUS.glob("*/*.scn")):
        golden = scn.with_suffix(".golden")
        if not golden.exists():
            continue
        c = compare(scn.stem, golden.read_text(), run_text(scn.read_text(), cfg).text())
        if c.agree:
            continue
        name = f"{scn.parent.name}/{scn.stem}"
        if c.ops_agree:
            extra = sorted(set(c.kernel_events) ^ set(c.model_events))
            out[name] = f"kernel events differ: kernel {c.kernel_events}, model {c.model_events}"
            if any("WARNING" in e for e in extra):
                out[name] = (
                    "the WARN's function: the kernel names the function it is inlined into; "
                    f"kernel {c.kernel_events}, model {c.model_events}"
                )
            continue
        k, m = c.kernel or "<end>", c.model or "<end>"
        lineno = int(k.split()[0]) if k.split()[0].isdigit() else 0
        lines = scn.read_text().splitlines()
        src = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        src = src.split("#")[0].strip()
        out[name] = f"{cause(src, k, m)}; `{src}`: kernel `{k}`, model `{m}`"
    print(f"# {len(out)} divergences, model profile {used}")
    print("KNOWN_DIVERGENCES: dict[str, str] = {")
    for name, why in out.items():
        print(f"    {name!r}: {why!r},")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
