"""Run mypy over the checkout as the installed package sees it.

The design card's folders install as ``alisa.sim``, ``alisa.kernels``, ... through
setuptools' package-dir mapping, which an editable install serves with an import hook that
mypy cannot follow. This builds the same tree out of symbolic links (``build/typecheck/alisa``),
checks ``alisa``, the tests and the benchmark scripts against it, and prints each error
with the checkout's own path.

    python .ci/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def link_tree() -> dict[str, str]:
    """Build build/typecheck/alisa from pyproject's package-dir; returns link path -> real path prefixes."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    pkg = TREE / "alisa"
    pkg.mkdir(parents=True)
    back: dict[str, str] = {}
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) != 2:  # sub-packages come with their parent's folder
            continue
        os.symlink(ROOT / folder, pkg / parts[1])
        back[f"{(pkg / parts[1]).relative_to(ROOT)}/"] = f"{folder}/"
    for f in (ROOT / mapping["alisa"]).glob("*.py"):
        os.symlink(f, pkg / f.name)
        back[str((pkg / f.name).relative_to(ROOT))] = f"{mapping['alisa']}/{f.name}"
    return back


def main() -> int:
    back = link_tree()
    scripts = sorted(
        str(p.relative_to(ROOT)) for d in ("benchmarks", "benchmarks/debug", ".ci") for p in (ROOT / d).glob("*.py")
    )
    env = {
        **os.environ,
        "MYPYPATH": os.pathsep.join(
            [str(TREE), str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "debug")]
        ),
    }
    cmd = [sys.executable, "-m", "mypy", str(TREE.relative_to(ROOT) / "alisa"), "tests", *scripts, *sys.argv[1:]]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = p.stdout + p.stderr
    for link, real in sorted(back.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(link, real)
    sys.stdout.write(out)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
