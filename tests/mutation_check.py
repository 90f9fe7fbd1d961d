"""Mutation check: put each hand-made bug of ``tests/mutations_*.py`` into a scratch copy and see whether the tests
that should catch it fail (issue 23). Not collected by pytest (no ``test_`` prefix) and not run by CI.

Usage (from the repository root, with the project's environment)::

    python tests/mutation_check.py                      # every mutation of every list
    python tests/mutation_check.py --list               # names, files and covering tests only
    python tests/mutation_check.py 'wheel_*' npz_allow_any_numpy_global --timeout 300

Each list is a module-level ``MUTATIONS`` or ``*_MUTATIONS`` in ``tests/mutations_*.py``: dicts with ``name``,
``file`` (repository-relative), ``old`` (text that occurs exactly once in that file), ``new`` (what replaces it),
``tests`` (pytest arguments, each item shlex-split: node ids, or e.g. ``"tests/test_x.py -k wheel"``; node ids
run together, each item with options in a run of its own) and, for a change the tests need not catch,
``reason`` (why it is not a bug). The tracked and untracked (not ignored) files are copied once to a temporary
folder; the real tree is never edited. Per mutation the file is changed there, the covering tests run with
``PYTHONPATH`` on the copy, ``OMP_NUM_THREADS=1``, no bytecode written and ``../shared`` hidden (as on a user's
clone; ``--shared DIR`` shows it), and the file is restored. Each distinct selection first runs once unmutated:
a selection that fails as it is cannot judge.

Prints one line per mutation (killed / SURVIVED / survived with a reason / TIMEOUT / ERROR; a selection that
picks no test counts as surviving) and a summary; exits 1 when a mutation survives without a reason, times out
or cannot be judged.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"name", "file", "old", "new", "tests"}


def load_mutations(root: Path = ROOT) -> list[dict]:
    """Every mutation of every ``tests/mutations_*.py`` list, each checked against the real tree."""
    found, names = [], set()
    for path in sorted((root / "tests").glob("mutations_*.py")):
        spec = importlib.util.spec_from_file_location(f"_mutation_list_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lists = [name for name in vars(module) if name == "MUTATIONS" or name.endswith("_MUTATIONS")]
        if not lists:
            raise SystemExit(f"{path}: defines no MUTATIONS or *_MUTATIONS list")
        for list_name in lists:
            for entry in getattr(module, list_name):
                where = f"{path.name}:{list_name}:{entry.get('name')}"
                missing = KEYS - set(entry)
                if missing:
                    raise SystemExit(f"{where}: missing key(s) {sorted(missing)}")
                if entry["name"] in names:
                    raise SystemExit(f"{where}: a second mutation of that name")
                count = (root / entry["file"]).read_text().count(entry["old"])
                if count != 1:
                    raise SystemExit(f"{where}: 'old' occurs {count} times in {entry['file']} (must be once); "
                                     "the code moved on: update the entry")
                if not entry["tests"]:
                    raise SystemExit(f"{where}: no covering tests")
                names.add(entry["name"])
                found.append({**entry, "list": path.name})
    return found


def scratch_copy(root: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of ``root`` copied to a new temporary folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    target = Path(tempfile.mkdtemp(prefix="affectverse-mutants-")) / "repo"
    for rel in filter(None, listed):
        source = root / rel
        if source.is_file():  # a tracked file deleted in the work tree is skipped
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


def pytest_runs(tests: list[str]) -> list[list[str]]:
    """The pytest command lines of a ``tests`` list: plain node ids and paths together in one run, each item
    with options (``-k``, ``-m``) in a run of its own (one pytest run takes one ``-k``)."""
    items = [shlex.split(item) for item in tests]
    plain = [arg for args in items if not any(a.startswith("-") for a in args) for arg in args]
    return ([plain] if plain else []) + [args for args in items if any(a.startswith("-") for a in args)]


def run_tests(scratch: Path, tests: list[str], timeout: float, shared: str) -> tuple[str, float, str]:
    """("pass" | "fail" | "none" | "timeout" | "error", seconds, output tail) of pytest on ``tests`` in
    ``scratch``: "fail" as soon as one run has a failing test, "none" when no run selected any test."""
    env = {**os.environ, "PYTHONPATH": str(scratch), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "AFFECTVERSE_SHARED": shared}
    start, statuses, tail = time.monotonic(), [], ""
    for args in pytest_runs(tests):
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                                  cwd=scratch, env=env, capture_output=True, text=True, check=False,
                                  timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start, tail
        tail = (done.stdout + done.stderr)[-1500:]
        # pytest exit codes: 0 passed, 1 some test failed, 5 nothing collected, others an error of the run itself
        status = {0: "pass", 1: "fail", 5: "none"}.get(done.returncode, "error")
        if status in ("fail", "error"):
            return status, time.monotonic() - start, tail
        statuses.append(status)
    return ("pass" if "pass" in statuses else "none"), time.monotonic() - start, tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutation names or shell patterns to run (default: all)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds per mutation, all its pytest runs together (default 300)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--shared", default="none", help="../shared folder to show the tests (default: hidden)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each selection")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print pytest's output tail per mutation")
    args = parser.parse_args(argv)

    mutations = load_mutations()
    if args.names:
        mutations = [m for m in mutations if any(fnmatch.fnmatchcase(m["name"], p) for p in args.names)]
        if not mutations:
            raise SystemExit(f"no mutation matches {args.names} (see --list)")
    if args.list:
        for m in mutations:
            note = "  [reason given]" if m.get("reason") else ""
            print(f"{m['name']:<50} {m['file']:<40} {' '.join(m['tests'])}{note}")
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the scratch copy
    scratch = scratch_copy(ROOT)
    print(f"{len(mutations)} mutations; scratch copy {scratch}", flush=True)
    results: dict[str, list[str]] = {k: [] for k in ("killed", "survived", "explained", "timeout", "error")}
    baseline: dict[tuple, str] = {}
    try:
        for m in mutations:
            key = tuple(m["tests"])
            if not args.no_baseline and key not in baseline:
                status, seconds, tail = run_tests(scratch, m["tests"], args.timeout, args.shared)
                baseline[key] = status
                if status not in ("pass", "none"):
                    print(f"baseline {status} ({seconds:.0f}s) of {' '.join(key)}:\n{tail}", flush=True)
            if baseline.get(key, "pass") not in ("pass", "none"):
                results["error"].append(m["name"])
                print(f"{'ERROR':<24} {m['name']}: its tests do not pass unmutated", flush=True)
                continue
            path = scratch / m["file"]
            original = path.read_text()
            mutated = original.replace(m["old"], m["new"], 1)
            if path.suffix == ".py":
                try:
                    compile(mutated, str(path), "exec")
                except SyntaxError as err:  # a bug no test needs to catch: Python refuses it; fix the entry
                    results["error"].append(m["name"])
                    print(f"{'ERROR':<24} {m['name']}: the mutated file does not compile ({err})", flush=True)
                    continue
            path.write_text(mutated)
            try:
                status, seconds, tail = run_tests(scratch, m["tests"], args.timeout, args.shared)
            finally:
                path.write_text(original)
            # after a clean baseline, a run that cannot even collect (rc 2: the mutant does not import) is caught
            outcome = {"fail": "killed", "error": "killed", "timeout": "timeout"}.get(
                status, "explained" if m.get("reason") else "survived")
            results[outcome].append(m["name"])
            label = {"killed": "killed", "survived": "SURVIVED", "explained": "survived (reason given)",
                     "timeout": "TIMEOUT"}[outcome]
            notes = {"error": "  (the tests did not even run: collection error)", "none": "  (no test selected)"}
            note = notes.get(status, "")
            if outcome == "killed" and m.get("reason"):
                note += "  (a reason is given, but the tests catch it: drop the reason)"
            print(f"{label:<24} {m['name']} ({seconds:.0f}s){note}", flush=True)
            if args.verbose or status == "error":
                print(tail, flush=True)
    finally:
        if args.keep:
            print(f"scratch copy kept: {scratch}")
        else:
            shutil.rmtree(scratch.parent, ignore_errors=True)

    print(f"\n{len(mutations)} mutations: {len(results['killed'])} killed, {len(results['survived'])} survived "
          f"without a reason, {len(results['explained'])} survived with a reason, {len(results['timeout'])} timed "
          f"out, {len(results['error'])} could not be judged")
    for outcome in ("survived", "timeout", "error"):
        if results[outcome]:
            print(f"  {outcome}: {', '.join(results[outcome])}")
    return 1 if results["survived"] or results["timeout"] or results["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
