"""The package layout (issue 18): what a wheel installs, which way imports flow, one command for every job."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from affectverse import cli

ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE = sorted(p.stem for p in ROOT.glob("*_affectverse.py"))
LIBRARY = sorted(ROOT.glob("affectverse/**/*.py"))
METRIC_SCRIPTS = "affectverse/scoring/metric_modules/"  # evaluate.load runs them as loose scripts
STDLIB = sys.stdlib_module_names


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for each import of ``path``; relative imports resolved for the
    remote code's ``from .x import`` form."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):  # `from a.b import c`: a.b.c where c is a module, else a.b
                module = "." * child.level + (child.module or "")
                found.extend((_resolve(module, a.name), inner) for a in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def _resolve(module: str, name: str) -> str:
    dotted = f"{module}.{name}"
    return dotted if (ROOT / dotted.replace(".", "/")).with_suffix(".py").is_file() else module


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _ours(name: str) -> bool:
    top = name.split(".")[0]
    return top in ("affectverse", "benchmarks", "train", "tests") or top in REMOTE_CODE


def test_remote_code_imports_only_torch_transformers_the_standard_library_and_each_other():
    """The ground floor: save_pretrained copies these files into every checkpoint, where nothing else exists."""
    assert {"configuration_affectverse", "modeling_affectverse", "processing_affectverse"} <= set(REMOTE_CODE)
    for name in REMOTE_CODE:
        for module, _ in _imports(ROOT / f"{name}.py"):
            top = module.split(".")[0]
            assert top in STDLIB or top in ("torch", "transformers", "numpy", "__future__", "") \
                or top in REMOTE_CODE, f"{name}.py imports {module}"


def test_imports_flow_one_way_without_circles_or_function_level_imports_of_the_project():
    """remote code <- library <- commands and benchmarks: the library never imports the command, the benchmarks,
    train.py or the tests; no module imports one of the project's inside a function; the module graph has no cycle."""
    graph = {}
    for path in LIBRARY:
        if path.as_posix().startswith((ROOT / METRIC_SCRIPTS).as_posix() + "/") and path.name != "__init__.py":
            continue
        name = _module_name(path)
        edges = set()
        for module, inner in _imports(path):
            if not _ours(module):
                continue
            assert not inner, f"{path.relative_to(ROOT)} imports {module} inside a function"
            assert module.split(".")[0] not in ("benchmarks", "train", "tests"), f"{name} imports {module}"
            assert module != "affectverse.cli" or name == "affectverse.__main__", f"{name} imports the command"
            edges.add(module)
        graph[name] = edges
    for name in REMOTE_CODE:
        graph[name] = {m.lstrip(".") for m, _ in _imports(ROOT / f"{name}.py") if m.lstrip(".") in REMOTE_CODE}
    for path in [ROOT / "train.py", *sorted((ROOT / "benchmarks").glob("*.py"))]:
        for module, inner in _imports(path):
            assert not (inner and _ours(module)), f"{path.relative_to(ROOT)} imports {module} inside a function"

    done, stack = set(), []

    def walk(node):
        if node in stack:
            pytest.fail("import circle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done or node not in graph:
            return
        stack.append(node)
        for target in sorted(graph[node] - {node}):
            walk(target)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        walk(node)


def test_a_wheel_installs_only_affectverse_and_the_remote_code_at_the_top_level(tmp_path):
    """Before: `pip install .` put modules named train and affectverse_cli and a package named benchmarks into
    site-packages, shadowing (or shadowed by) any other project's."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"no build backend in this environment ({build.stderr.strip().splitlines()[-1]})")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("affectverse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"affectverse"} | {f"{m}.py" for m in REMOTE_CODE}
    # every library module and the evaluate metric scripts (folders without __init__.py) are in it
    assert {p.relative_to(ROOT).as_posix() for p in LIBRARY} <= set(names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "affectverse = affectverse.cli:main" in entry


SUBCOMMANDS = ("train", "evaluate", "score", "report", "clips", "predict", "embed", "live", "export", "push",
               "demo")


def test_one_command_lists_every_job_and_each_subcommand_has_help(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SUBCOMMANDS), listing
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and out.startswith("usage:") and name in out.splitlines()[0], (name, out[:200])
    with pytest.raises(SystemExit):
        cli.main(["predict", "model", "clip.mp4", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_train_py_and_affectverse_train_run_the_same_code():
    source = (ROOT / "train.py").read_text()
    assert "from affectverse.training.run import main" in source and len(source.splitlines()) < 15
    assert cli.DELEGATED["train"][0].__module__ == "affectverse.training.run"


def test_python_m_affectverse_is_the_command():
    result = subprocess.run([sys.executable, "-m", "affectverse", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "usage: affectverse" in result.stdout, result.stderr[-2000:]
