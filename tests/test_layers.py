"""The architecture's rules, read from the imports with `ast`: a failure names the offending import.

Each package is a stack of layers that follows the data flow; a module imports only from its own
layer or the ones below, the stages import only downward (extract <- detect <- classify), and the
synthetic fixtures stay off the core path. See the README's Layout section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("extract", "detect", "classify")

# Lowest layer first; a module's layer is that of the longest prefix listed.
LAYERS = {
    "extract": [
        ("extract.io", "extract.runtime", "extract.provenance", "extract.weights",
         "extract.progress", "extract.threads", "extract.decode", "extract.flax_checkpoint"),
        ("extract.config", "extract.i3d", "extract.cache", "extract.inception_i3d",
         "extract.inception_weights"),
        ("extract.pipeline", "extract.kinetics"),
        ("extract.__main__", "extract"),
    ],
    "detect": [
        ("detect.config", "detect.runs"),
        ("detect.data",),
        ("detect.model",),
        ("detect.inference",),
        ("detect.evaluation",),
        ("detect.train",),
        ("detect.synthetic",),
        ("detect.apps", "detect.experiments"),
        ("detect.__main__", "detect"),
    ],
    "classify": [
        ("classify.config",),
        ("classify.data", "classify.metrics"),
        ("classify.model",),
        ("classify.tokens",),
        ("classify.train",),
        ("classify.report",),
        ("classify.emotion",),
        ("classify.run", "classify.predict"),
        ("classify.synthetic",),
        ("classify.__main__", "classify"),
    ],
}
CORE = ("detect.config", "detect.runs", "detect.data", "detect.model", "detect.inference",
        "detect.evaluation", "detect.train")
CLASSIFY_MAY_USE = ("detect.data.converters", "detect.synthetic.videos")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def resolve(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The project modules that `from module import names` loads (a name may be a submodule)."""
    out = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    if len(out) < len(names) and module in known:
        out.append(module)
    return out


def imports(known: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported project module, line)], function-local imports included."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for mod, path in known.items():
        edges = []
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(a.name, node.lineno) for a in node.names if a.name in known]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [a.name for a in node.names]
                edges += [(m, node.lineno) for m in resolve(base, names, known)]
        graph[mod] = [(m, line) for m, line in edges if m != mod]
    return graph


def layer_of(mod: str) -> tuple[str, int] | None:
    pkg = mod.split(".")[0]
    best, rank = "", None
    for i, group in enumerate(LAYERS.get(pkg, [])):
        for prefix in group:
            if (mod == prefix or mod.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    return None if rank is None else (pkg, rank)


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Every import cycle met by a depth-first walk, as "a -> b -> a"."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    found: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep, _ in graph.get(m, []):
            if state.get(dep) == 1:
                found.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def upward(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports of a higher layer of the same package, as "module:line: ..."."""
    bad = []
    for mod, edges in graph.items():
        mine = layer_of(mod)
        for dep, line in edges:
            theirs = layer_of(dep)
            if mine and theirs and mine[0] == theirs[0] and theirs[1] > mine[1]:
                bad.append(f"{mod}:{line}: {mod} (layer {mine[1]}) imports {dep} "
                           f"(layer {theirs[1]})")
    return bad


def cross_stage(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for mod, edges in graph.items():
        for dep, line in edges:
            if mod.startswith("extract") and not dep.startswith("extract"):
                bad.append(f"{mod}:{line}: stage one imports {dep}")
            elif mod.startswith("detect") and dep.startswith("classify"):
                bad.append(f"{mod}:{line}: detect imports {dep}")
            elif (mod.startswith("classify") and dep.startswith("detect")
                  and not dep.startswith(CLASSIFY_MAY_USE)):
                bad.append(f"{mod}:{line}: classify imports {dep} (it may take only "
                           f"{', '.join(CLASSIFY_MAY_USE)} from detect)")
    return bad


def synthetic_on_core(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    return [f"{mod}:{line}: {mod} imports {dep}"
            for mod, edges in graph.items() if mod.startswith(CORE)
            for dep, line in edges if dep.startswith("detect.synthetic")]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int]]]:
    return imports(project_modules())


def test_every_module_has_a_layer():
    assert [m for m in project_modules() if layer_of(m) is None] == []


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_layers_only_import_downward(graph):
    assert upward(graph) == []


def test_stages_import_only_downward(graph):
    assert cross_stage(graph) == []


def test_core_path_never_imports_the_synthetic_fixtures(graph):
    assert synthetic_on_core(graph) == []


def test_the_rules_catch_bad_imports(tmp_path):
    """A small tree with one import of each forbidden kind, function-local ones included."""
    files = {
        "detect.data.windows": "def f():\n    from detect.train import loop\n",
        "detect.train.loop": "from detect.data.windows import f\nimport detect.synthetic.videos\n",
        "detect.synthetic.videos": "",
        "extract.cache": "from detect.runs import x\n",
        "detect.runs": "x = 1\n",
        "classify.run": "from detect.train.loop import train\n",
    }
    known = {}
    for mod, text in files.items():
        known[mod] = tmp_path / f"{mod}.py"
        known[mod].write_text(text)
    g = imports(known)
    assert circles(g) == ["detect.train.loop -> detect.data.windows -> detect.train.loop"]
    assert upward(g) == [
        "detect.data.windows:2: detect.data.windows (layer 1) imports detect.train.loop (layer 5)",
        "detect.train.loop:2: detect.train.loop (layer 5) imports detect.synthetic.videos "
        "(layer 6)"]
    assert cross_stage(g) == [
        "extract.cache:1: stage one imports detect.runs",
        "classify.run:1: classify imports detect.train.loop (it may take only "
        "detect.data.converters, detect.synthetic.videos from detect)"]
    assert synthetic_on_core(g) == ["detect.train.loop:2: detect.train.loop imports "
                                    "detect.synthetic.videos"]
