"""The layering rules: include/ imports nothing from mm/, drivers/ or kernel.py;
fast/ imports nothing from mm/ either (what it needs of mm/ is passed in)."""

import ast
from pathlib import Path

import hmmsim

ROOT = Path(hmmsim.__file__).parent


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    package = "hmmsim." + path.parent.name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            # a relative import, spelled out from this module's package
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            out.add(f"{base}.{node.module}" if node.module else base)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_include_is_leaf_layer():
    for path in (ROOT / "include").glob("*.py"):
        upper = ("hmmsim.mm", "hmmsim.drivers", "hmmsim.kernel", "hmmsim.userspace")
        bad = {m for m in imports(path) if m.startswith(upper)}
        assert not bad, f"{path.name} imports {bad}"


#: fast/ may import the encoders (include/, and the driver's uAPI constants,
#: which are include/-level data), the batched struct-page operations both
#: layers share (mm/page_batch.py, issue 16 item 3), and nothing else of mm/.
FAST_MAY_IMPORT = (
    "hmmsim.include",
    "hmmsim.fast",
    "hmmsim.kconfig",
    "hmmsim.bug",
    "hmmsim.drivers.test_hmm_uapi",
    "hmmsim.mm.page_batch",
)


def test_fast_layer_imports_no_behaviour():
    """fast/ (the bulk forms of mm/ loops) uses include/'s encoders and what its
    caller passes in: no module of mm/, drivers/, kernel.py or userspace.py."""
    paths = sorted((ROOT / "fast").rglob("*.py"))
    assert paths, "no fast/ layer"
    for path in paths:
        ours = {m for m in imports(path) if m == "hmmsim" or m.startswith("hmmsim.")}
        bad = {m for m in ours if not m.startswith(FAST_MAY_IMPORT)}
        assert not bad, f"fast/{path.relative_to(ROOT / 'fast')} imports {bad}"


def test_layering_check_sees_relative_and_absolute_imports(tmp_path):
    pkg = tmp_path / "fast"
    pkg.mkdir()
    mod = pkg / "m.py"
    mod.write_text("from ..mm import memory\nfrom hmmsim.mm.rmap import x\nimport hmmsim.kernel\n")
    assert {"hmmsim.mm", "hmmsim.mm.rmap", "hmmsim.kernel"} <= imports(mod)


def test_every_model_module_names_the_pinned_commit():
    for sub in ("include", "mm"):
        for path in (ROOT / sub).glob("*.py"):
            if path.name == "__init__.py":
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "0eaed89c18ae" in doc, f"{sub}/{path.name} docstring lacks the pinned commit"
