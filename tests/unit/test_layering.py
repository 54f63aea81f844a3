"""The layering rules: include/ imports nothing from mm/, drivers/ or kernel.py;
fast/ imports nothing from mm/ either (what it needs of mm/ is passed in)."""

import ast
from pathlib import Path

import hmmsim
from hmmsim.include.mm_types import PAGE_FIELDS

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


#: struct page columns (include/mm_types.PageArrays)
COLUMNS = frozenset(name for name, _ in PAGE_FIELDS)
#: the direct struct-page stores fast/ may make: the dmirror driver's own
#: page->zone_device_data, in the driver's bulk forms (as drivers/ may,
#: tests/unit/test_driver_api.py), device-private and device-coherent
FAST_MAY_STORE = {
    "test_hmm.py": {"zone_device_data"},
    "test_hmm_coherent.py": {"zone_device_data"},
}
#: NumPy calls and ndarray methods that write into their first argument / self
_WRITING_FUNCS = frozenset({"put", "copyto", "place", "putmask", "put_along_axis"})
_WRITING_METHODS = frozenset({"fill", "put", "itemset", "setfield", "sort", "partition"})


def column_stores(source: str, filename: str = "<src>") -> list[tuple[str, str]]:
    """(where, column) of each write into a struct-page column in a module:
    a subscript store or augmented store (a.flags[i] |= ..., whole-column
    a._refcount[:] = ...), also through a local name bound to a column
    (rc = a._refcount; rc[i] = 0), a NumPy call that writes its first
    argument or `out=` (np.put(a.flags, ...), np.add(x, y, out=a.index)),
    or a writing ndarray method (a.flags.fill(0)). Reads are not stores."""
    tree = ast.parse(source, filename)
    out: list[tuple[str, str]] = []

    def column_of(node: ast.AST, aliases: dict[str, str]) -> str | None:
        while isinstance(node, ast.Subscript):
            node = node.value
        if isinstance(node, ast.Attribute) and node.attr in COLUMNS:
            return node.attr
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        return None

    def stored(t: ast.AST) -> list[ast.AST]:
        """The objects an assignment target writes into (not its index expressions)."""
        if isinstance(t, (ast.Tuple, ast.List)):
            return [x for e in t.elts for x in stored(e)]
        if isinstance(t, ast.Starred):
            return stored(t.value)
        return [t]

    # a name bound to a column anywhere in the module counts as that column
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute):
            if node.value.attr in COLUMNS:
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        aliases[t.id] = node.value.attr
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = [x for t in node.targets for x in stored(t)]
        elif isinstance(node, ast.AnnAssign):
            targets = stored(node.target)
        elif isinstance(node, ast.AugAssign):
            targets = stored(node.target)
        for t in targets:
            if isinstance(t, ast.Subscript) or isinstance(node, ast.AugAssign):
                if col := column_of(t, aliases):
                    out.append((f"{filename}:{t.lineno}", col))
        if isinstance(node, ast.Call):
            f = node.func
            written: list[ast.AST] = [kw.value for kw in node.keywords if kw.arg == "out"]
            if isinstance(f, ast.Attribute) and f.attr in _WRITING_METHODS:
                written.append(f.value)
            if isinstance(f, ast.Attribute) and f.attr in _WRITING_FUNCS and node.args:
                written.append(node.args[0])
            for w in written:
                if col := column_of(w, aliases):
                    out.append((f"{filename}:{node.lineno}", col))
    return sorted(set(out), key=lambda wc: int(wc[0].rsplit(":", 1)[1]))


def test_the_store_check_sees_every_kind_of_column_write():
    src = """
def f(a, page, idx, x):
    a._refcount[idx] = 1
    page.a.flags[page.i] |= 8
    a.order[:] = 0
    rc = a._mapcount
    rc[idx] -= 1
    np.put(a.mapping, idx, 0)
    np.add(x, 1, out=a.index)
    a.head_off.fill(0)
    y = a.flags[idx] & 3
    z = a._refcount[idx] == 1
    a.frames[idx] = 0
    w = rc[idx]
"""
    found = column_stores(src)
    assert [c for _, c in found] == [
        "_refcount",
        "flags",
        "order",
        "_mapcount",
        "mapping",
        "index",
        "head_off",
    ], found


def test_fast_layer_stores_struct_pages_only_through_page_batch():
    """fast/ changes struct pages only through mm/page_batch.py's batched
    operations (issue 16 item 2), each named after the kernel helper it
    batches, so every struct-page change of a bulk pass has one per-page
    reference to be compared with (tests/unit/test_page_batch.py)."""
    found = []
    for path in sorted((ROOT / "fast").rglob("*.py")):
        allowed = FAST_MAY_STORE.get(path.name, set())
        rel = str(path.relative_to(ROOT))
        found += [f"{w} stores {c!r}" for w, c in column_stores(path.read_text(), rel)]
        found = [v for v in found if not (v.startswith(rel) and v.split("'")[1] in allowed)]
    assert found == [], "use mm/page_batch.py:\n" + "\n".join(found)


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
