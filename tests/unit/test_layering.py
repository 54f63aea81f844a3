"""The layering rule: include/ imports nothing from mm/, drivers/ or kernel.py."""

import ast
from pathlib import Path

import hmmsim

ROOT = Path(hmmsim.__file__).parent


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_include_is_leaf_layer():
    for path in (ROOT / "include").glob("*.py"):
        upper = ("hmmsim.mm", "hmmsim.drivers", "hmmsim.kernel", "hmmsim.userspace")
        bad = {m for m in imports(path) if m.startswith(upper)}
        assert not bad, f"{path.name} imports {bad}"


def test_every_model_module_names_the_pinned_commit():
    for sub in ("include", "mm"):
        for path in (ROOT / sub).glob("*.py"):
            if path.name == "__init__.py":
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "0eaed89c18ae" in doc, f"{sub}/{path.name} docstring lacks the pinned commit"
