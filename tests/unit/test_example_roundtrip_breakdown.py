"""docs/examples/roundtrip_breakdown.py, which docs/performance.md quotes, still runs.

The script wraps named functions of the allocator, the dmirror driver and the fast layer
to time each part of a round trip; a rename would make it fail with AttributeError, or
leave a part at zero. A tiny run must print both tables, every part measured.
"""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "roundtrip_breakdown.py"


def test_roundtrip_breakdown_runs_and_times_every_part():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "4", "1"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tables = out.stdout.split("round trips after a warm-up")
    assert len(tables) == 3, out.stdout  # THP, then 4 KiB
    for table in tables[1:]:
        rows = re.findall(
            r"^\| (?!\*\*|part|---)(.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", table, re.M
        )
        parts = {name: float(rt) for name, _dev, _sys, rt in rows}
        assert any(name.startswith("page allocator") for name in parts), parts
        assert any(name.startswith("the windows") for name in parts), parts
        assert all(rt > 0 for rt in parts.values()), parts
        assert re.search(r"\*\*total, cpu time\*\* .*\*\*[\d.]+x two copies\*\*", table)
