"""Write files whole or not at all: a temp file in the same folder, then rename.

An output folder that did not exist is built the same way: its files go into a hidden
temp folder beside it, which is renamed into place once all are written, so an error
leaves no half-written folder (and no parent folders it created).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    """The process's umask (read without changing it where Linux shows it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename onto it only if the block succeeds."""
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); an output gets the mode open() would give it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _output_error(path: Path, e: OSError | ValueError) -> InputError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return InputError(f"cannot write the output here: {reason}", file=str(path), field="--out")


def check_output_folder(folder: Path) -> None:
    """Fail before any work where ``folder`` cannot become an output folder: it, or a
    folder above it, is a file (or the path holds a NUL byte)."""
    try:
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    except (OSError, ValueError) as e:
        raise _output_error(folder, e) from None
    if blocker is not None:
        raise InputError(
            f"cannot write the output here: {blocker} is a file, not a folder", file=str(folder), field="--out"
        )


def make_dirs(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (outermost first); an output path that
    cannot be a folder (a file in the way, no permission, a NUL byte) is an InputError."""
    created: list[Path] = []
    check_output_folder(folder)
    try:
        for p in reversed([p for p in [folder, *folder.parents] if not p.exists()]):
            p.mkdir()
            created.append(p)
    except (OSError, ValueError) as e:
        for p in reversed(created):
            shutil.rmtree(p, ignore_errors=True)
        raise _output_error(folder, e) from None
    return created


def write_folder(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` into ``out``. A new folder appears whole or not at all; in an
    existing one each file is replaced atomically."""
    check_output_folder(out)
    if out.is_dir():
        for name, data in files.items():
            write_bytes(out / name, data)
        return [out / n for n in files]
    created = make_dirs(out.parent)
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private (0700)
        os.rename(tmp, out)
    except BaseException as e:
        for p in ([tmp] if tmp is not None else []) + created[::-1]:
            shutil.rmtree(p, ignore_errors=True)
        if isinstance(e, (OSError, ValueError)):
            raise _output_error(out, e) from None
        raise
    return [out / n for n in files]
