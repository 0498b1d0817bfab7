"""The package's architecture, read from the sources with `ast` (nothing is
imported, so this runs in well under a second): no import cycle, no import
upward across the declared layers, `model` self-contained, nothing of
`launch` or `configs` imported by the package, few top-level modules and no
module over 300 lines.

Every import statement counts, also those inside functions and under
`if TYPE_CHECKING:` (a type-only import still says which module depends on
which). `from P import x` counts as an import of the module `P.x` where that
is one of the project's modules, else of `P`.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "alexnet_jax"

# The layers, lowest first: a module may import its own layer or lower ones.
# A sub-package is a layer of its own; the top-level modules are named.
LAYERS = (
    ("errors", (f"{PACKAGE}.errors",)),
    ("model", (f"{PACKAGE}.model",)),
    ("parallel", (f"{PACKAGE}.parallel",)),
    ("files", (f"{PACKAGE}.files",)),
    ("platform", (f"{PACKAGE}.platform",)),
    ("data", (f"{PACKAGE}.data",)),
    ("runs", (f"{PACKAGE}.runs",)),
    ("train", (f"{PACKAGE}.train",)),
    ("inference", (f"{PACKAGE}.inference",)),
    ("entry points", tuple(f"{PACKAGE}.{name}" for name in ("main", "evaluate", "predict", "retrieval"))),
)
MODEL_LAYER = [name for name, _ in LAYERS].index("model")
# The package's own __init__ sits at the bottom: anything may read its __version__.
PACKAGE_INIT_LAYER = 0
FORBIDDEN = ("launch", "configs")  # the package must work without the repository's other folders
MAX_TOP_LEVEL_MODULES = 8  # alexnet_jax/*.py beside __init__.py and the sub-packages
MAX_LINES = 300
LINE_CHECKED = ("alexnet_jax", "launch", "bench", "configs")


@dataclasses.dataclass(frozen=True)
class Import:
    """One import of `target` by `module`, at `where` (path:line)."""

    module: str
    target: str
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def module_files(package: str = PACKAGE) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every module of `package` (a package by its __init__.py)."""
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, known: set[str]) -> str:
    """The longest prefix of the dotted `name` that is a known module ("" if none)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return ""


def imported_names(path: pathlib.Path, module: str) -> list[tuple[str, int]]:
    """(dotted name, line) of everything `path` imports, at any depth: `import a.b`
    gives "a.b"; `from a import b` gives "a.b" (a module or a name in `a`)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upward
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def project_imports(package: str = PACKAGE) -> list[Import]:
    """Every import by a module of `package` of a module of `package`."""
    files = module_files(package)
    known = set(files)
    found = []
    for module, path in files.items():
        for name, line in imported_names(path, module):
            target = _resolve(name, known)
            if target and target != module:
                found.append(Import(module, target, f"{path.relative_to(ROOT)}:{line}"))
    return found


def layer_of(module: str) -> int | None:
    """The index in LAYERS of `module`'s layer; None if it belongs to none."""
    if module == PACKAGE:
        return PACKAGE_INIT_LAYER
    for index, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    return None


def find_cycle(imports: list[Import]) -> list[Import]:
    """The imports of one cycle in the graph (empty if there is none)."""
    graph: dict[str, list[Import]] = {}
    for edge in imports:
        graph.setdefault(edge.module, []).append(edge)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Import] = []

    def visit(module: str) -> list[Import]:
        state[module] = 1
        for edge in graph.get(module, []):
            if state.get(edge.target) == 1:  # back to a module on the path: the cycle
                start = next(i for i, e in enumerate(path) if e.module == edge.target)
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                if cycle := visit(edge.target):
                    return cycle
                path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def upward_imports(imports: list[Import]) -> list[str]:
    """One line per import of a higher layer than the importer's."""
    bad = []
    for edge in imports:
        low, high = layer_of(edge.module), layer_of(edge.target)
        if low is not None and high is not None and high > low:
            bad.append(f"{edge} (layer {LAYERS[high][0]} above {LAYERS[low][0]})")
    return bad


def test_every_module_belongs_to_a_declared_layer():
    unplaced = sorted(m for m in module_files() if layer_of(m) is None)
    assert not unplaced, f"modules in no layer: {', '.join(unplaced)}: add them to LAYERS in {__file__}"


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(project_imports())
    assert not cycle, "import cycle: " + " -> ".join(str(edge) for edge in cycle)


def test_no_import_goes_up_a_layer():
    bad = upward_imports(project_imports())
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_model_imports_nothing_of_the_project_but_itself():
    model = f"{PACKAGE}.model"
    bad = [
        str(edge)
        for edge in project_imports()
        if layer_of(edge.module) == MODEL_LAYER and not (edge.target == model or edge.target.startswith(model + "."))
    ]
    assert not bad, f"{model} imports the project outside itself:\n" + "\n".join(bad)


def test_the_package_imports_neither_launch_nor_configs():
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {module} imports {name}"
        for module, path in module_files().items()
        for name, line in imported_names(path, module)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, f"the package imports {' or '.join(FORBIDDEN)}:\n" + "\n".join(bad)


def test_the_package_has_few_top_level_modules():
    top = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (
        f"{PACKAGE}/ holds {len(top)} modules beside its sub-packages ({', '.join(top)}); "
        f"at most {MAX_TOP_LEVEL_MODULES}: move some into the sub-package of their concern"
    )


def _line_counts() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in LINE_CHECKED
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def test_no_module_is_over_300_lines():
    counts = _line_counts()
    long = [f"{name}: {n} lines" for name, n in counts.items() if n > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them by concern):\n" + "\n".join(long)


def test_the_checks_catch_violations():
    """The checks above on made-up graphs: each names the module and the import."""
    up = Import(f"{PACKAGE}.model.layers", f"{PACKAGE}.train.steps", "alexnet_jax/model/layers.py:3")
    (line,) = upward_imports([up])
    assert "alexnet_jax.model.layers imports alexnet_jax.train.steps" in line and "layers.py:3" in line
    assert upward_imports([Import(up.target, up.module, "x.py:1")]) == []  # downward is fine
    a_b = Import("a", "b", "a.py:1")
    b_c = Import("b", "c", "b.py:2")
    c_a = Import("c", "a", "c.py:5")
    assert find_cycle([a_b, b_c, c_a]) == [a_b, b_c, c_a]
    assert find_cycle([a_b, b_c]) == []
    assert find_cycle([Import("x", "y", "x.py:1"), a_b, b_c, Import("c", "b", "c.py:9")])[-1].where == "c.py:9"
