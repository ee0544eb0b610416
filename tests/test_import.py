"""The layers: the core never looks up, and no module imports itself back through others.

Read from the source (every import, those inside functions included), not from ``sys.modules``
after an import: an import hidden in a function is still a dependency.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "monitoring", "tasks", "flows", "cli")
# What the core may never import: the orchestrator, the tracking and drift libraries, DVC, and
# every layer above it.
NOT_IN_CORE = ("prefect", "mlflow", "evidently", "dvc", "flows", "tasks", "monitoring", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from package import module` imports the module too
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its source)."""
    modules = {module_name(path): path for package in PACKAGES for path in sources(package)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for _, target in imports(path) if target in modules and target != name}
    return graph


def test_the_core_imports_no_orchestrator_registry_or_upper_layer_anywhere_in_its_source():
    offences = [f"{path.relative_to(ROOT)}:{line}: import {module}"
                for path in sources("distill") for line, module in imports(path)
                if module.split(".")[0] in NOT_IN_CORE]
    assert not offences, "the core (distill/) looks up:\n" + "\n".join(offences)


def test_the_check_sees_an_import_hidden_in_a_function(tmp_path):
    hidden = tmp_path / "hidden.py"
    hidden.write_text("def f():\n    from flows.labelling import label_on_dask\n    import mlflow\n")
    assert [module.split(".")[0] for _, module in imports(hidden)] == ["flows", "flows", "mlflow"]


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every circle a depth-first walk meets, as "a -> b -> a"."""
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circles_between_project_modules():
    graph = project_graph()
    assert "flows.distillation" in graph["flows.pipeline"]  # the graph holds the project's edges
    assert not cycles(graph), "import circles:\n" + "\n".join(cycles(graph))


def test_the_walk_finds_a_circle_through_three_modules():
    graph = {"flows.pipeline": {"flows.monitor"}, "flows.monitor": {"flows.redistill"},
             "flows.redistill": {"flows.pipeline", "distill.data"}, "distill.data": set()}
    assert cycles(graph) == ["flows.monitor -> flows.redistill -> flows.pipeline -> flows.monitor"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_importing_the_stage_commands_loads_no_orchestration_or_tracking_library():
    code = ("import sys, distill, distill.config, distill.data, distill.teacher, distill.label, "
            "distill.students, distill.evaluate, distill.audit, distill.gates, distill.stages;"
            "bad = [m for m in ('prefect', 'mlflow', 'evidently', 'dvc', 'great_expectations') if m in sys.modules];"
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"imported at import time: {proc.stdout} {proc.stderr[-500:]}"


def test_importing_the_core_warns_nothing():
    """Every stage command imports the config: a warning there (a field shadowing pydantic's own
    ``validate``, say) would be printed by every command a user runs."""
    code = "import distill.config, distill.gates, distill.stages, distill.lm.validate"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_flows_and_tasks_never_read_dvcs_printed_text():
    """Whether a stage ran comes from DVC's Python API, never from matching what `dvc repro` prints."""
    phrases = ("didn't change", "skipping", "Running stage", "is cached", "git add")
    offences = []
    for package in ("flows", "tasks"):
        for path in sources(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        any(phrase in node.value for phrase in phrases):
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not offences, "\n".join(offences)


def test_a_long_module_says_why_it_is_one_file():
    long = []
    for package in (*PACKAGES, "benchmarks"):
        for path in sources(package):
            lines = path.read_text().count("\n")
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if lines > 420 and not any(word in doc for word in ("on purpose", "why the module is long", "one module",
                                                                   "long because")):
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, "split these, or give the reason in the docstring:\n" + "\n".join(long)
