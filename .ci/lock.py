"""requirements.lock: the exact versions a fresh machine installs for `make run` and `make test`.

    python .ci/lock.py write --extras kernels,accuracy,dev    # `make lock`: resolve again, in a new venv
    python .ci/lock.py check                                  # pyproject.toml and the lock agree
    python .ci/lock.py installed                              # this Python has exactly the lock

The lock is a requirements file (name==version per line), not a uv or pip-tools lock
file: pip makes it, with its resolver in a fresh venv, because the torch pin must resolve
to the CPU wheel in the machine's local wheel folder, which pip's configuration points at
(uv does not read it); read back with ``pip freeze``, it holds every package, transitive
ones included, for this platform (Linux x86-64, CPython 3.11). Installs go through uv
(pinned in the lock itself), which installs exactly the lock's lines (``--no-deps -r``:
no resolving at install time) in parallel. Packages named in pyproject.toml's
``[tool.alisa.lock] no-deps`` are locked without their own dependencies; ``--keep``
re-locks with the current versions wherever the lists still admit them. The header
records a hash of the dependency lists the lock was made from, so ``check`` fails as
soon as pyproject.toml changes them without a new lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
BOOTSTRAP = {"pip"}  # the installer itself: it comes with the venv, the lock does not install it

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare Python: pip vendors the same library
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[assignment]


class LockError(Exception):
    pass


def inputs(pyproject: Path, extras: list[str]) -> dict[str, list[str]]:
    """The dependency lists the lock is made from: build requirements, the core, each extra."""
    data = tomllib.loads(pyproject.read_text())
    optional = data["project"].get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise LockError(f"{pyproject}: no extra named {', '.join(unknown)} in [project.optional-dependencies]")
    got = {"build-system.requires": data["build-system"]["requires"], "dependencies": data["project"]["dependencies"]}
    got |= {f"extra:{e}": optional[e] for e in sorted(extras)}
    got["no-deps"] = data.get("tool", {}).get("alisa", {}).get("lock", {}).get("no-deps", [])
    return got


def no_deps_names(lists: dict[str, list[str]]) -> set[str]:
    """Packages installed for the files they ship, without their own dependencies."""
    return {canonicalize_name(n) for n in lists.get("no-deps", [])}


def inputs_hash(lists: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()


def read_lock(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(header fields, pins: canonical name -> version)."""
    header: dict[str, str] = {}
    pins: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("# ") and ": " in line:
            k, _, v = line[2:].partition(": ")
            header[k.strip()] = v.strip()
        elif line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            if not sep or not version:
                raise LockError(f"{path}:{n}: not a 'name==version' pin: {line!r}")
            pins[canonicalize_name(name)] = version
    return header, pins


def check(pyproject: Path, lock: Path) -> list[str]:
    """Problems, empty when the lock was made from pyproject.toml's current lists and pins
    a version of every requirement that satisfies it."""
    if not lock.is_file():
        return [f"{lock} is missing: run `make lock`"]
    header, pins = read_lock(lock)
    extras = [e for e in header.get("extras", "").split(",") if e]
    try:
        lists = inputs(pyproject, extras)
    except LockError as e:
        return [str(e)]
    problems = []
    if header.get("inputs-sha256") != inputs_hash(lists):
        problems.append(f"{lock} was made from other dependency lists than {pyproject.name} has now: run `make lock`")
    for where, reqs in lists.items():
        if where == "no-deps":  # names, each also required (and so checked) where it is listed
            continue
        for spec in reqs:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in pins:
                problems.append(f"{pyproject.name} {where}: '{spec}' is not pinned in {lock.name}")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(
                    f"{pyproject.name} {where}: '{spec}' does not admit the locked {req.name}=={pins[name]}"
                )
    return problems


def installed() -> dict[str, str]:
    """This interpreter's distributions (canonical name -> version), as pip freeze --all sees them."""
    from importlib.metadata import distributions

    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def compare_installed(lock: Path, have: dict[str, str], own: str = "alisa") -> list[str]:
    _, pins = read_lock(lock)
    problems = [
        f"{n}=={v} is installed, the lock has {pins[n]}" for n, v in sorted(have.items()) if n in pins and pins[n] != v
    ]
    problems += [
        f"{n}=={v} is installed but not in the lock"
        for n, v in sorted(have.items())
        if n not in pins and n not in BOOTSTRAP and n != own
    ]
    problems += [f"{n}=={v} is locked but not installed" for n, v in sorted(pins.items()) if n not in have]
    return problems


def split_no_deps(lists: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The extras' requirements as (resolved with their dependencies, installed without)."""
    skip = no_deps_names(lists)
    reqs = [spec for where, specs in lists.items() if where.startswith("extra:") for spec in specs]
    with_deps = sorted({s for s in reqs if canonicalize_name(Requirement(s).name) not in skip})
    without = sorted({s for s in reqs if canonicalize_name(Requirement(s).name) in skip})
    return with_deps, without


def write(extras: list[str], python: str, lock: Path, keep: bool = False) -> None:
    lists = inputs(ROOT / "pyproject.toml", extras)
    env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}  # resolve afresh, not from the old lock
    with_deps, without = split_no_deps(lists)
    with tempfile.TemporaryDirectory(prefix="alisa-lock-") as tmp:
        # --keep: the current lock's versions stay wherever the new lists admit them
        pin = ["-c", str(Path(tmp) / "old.lock")] if keep and lock.is_file() else []
        if pin:
            (Path(tmp) / "old.lock").write_text(lock.read_text())
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pin]
        subprocess.run([*pip, *lists["build-system.requires"]], check=True, env=env)
        # the project's own dependencies and its extras', then the no-deps packages alone
        subprocess.run([*pip, "-e", str(ROOT), *with_deps], check=True, env=env)
        if without:
            subprocess.run([*pip, "--no-deps", *without], check=True, env=env)
        freeze = subprocess.run(
            [py, "-m", "pip", "freeze", "--all", "--exclude-editable"],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        pyver = subprocess.run(
            [py, "-c", "import platform; print(platform.python_version())"], check=True, capture_output=True, text=True
        ).stdout.strip()
    pins = sorted(
        (
            ln
            for ln in freeze.splitlines()
            if ln and not ln.startswith("#") and canonicalize_name(ln.partition("==")[0]) not in BOOTSTRAP
        ),
        key=str.lower,
    )
    head = [
        "# requirements.lock: what `make run` and `make test` install (pip constraints; see .ci/lock.py).",
        "# Regenerate with `make lock` after changing dependencies in pyproject.toml, or to take newer releases.",
        f"# extras: {','.join(extras)}",
        f"# inputs-sha256: {inputs_hash(lists)}",
        f"# made: {datetime.now(UTC).date().isoformat()} on {platform.system()} {platform.machine()}, CPython {pyver}",
    ]
    tmp_lock = lock.with_suffix(".lock.tmp")
    tmp_lock.write_text("\n".join(head + pins) + "\n")
    tmp_lock.replace(lock)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--extras", required=True)
    w.add_argument("--python", default=sys.executable)
    w.add_argument("--keep", action="store_true", help="keep the current lock's versions where the lists admit them")
    sub.add_parser("check")
    sub.add_parser("installed")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "write":
            write([e for e in args.extras.split(",") if e], args.python, LOCK, keep=args.keep)
            print(f"wrote {LOCK}")
            return 0
        problems = check(ROOT / "pyproject.toml", LOCK) if args.cmd == "check" else compare_installed(LOCK, installed())
    except LockError as e:
        problems = [str(e)]
    for p in problems:
        print(f"lock: {p}", file=sys.stderr)
    if problems and args.cmd == "installed":
        print("lock: this venv differs from requirements.lock; `make clean test` rebuilds it", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
