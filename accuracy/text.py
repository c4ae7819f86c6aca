"""The bundled evaluation text and its tokenisation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alisa.sim.errors import InputError

BUNDLED = "python_reference.txt"
SOURCE = (
    "The Python Language Reference (sections on the execution model, statements, data "
    "model and expressions), as CPython 3.11.7 ships it in pydoc_data/topics.py; "
    "Copyright (c) 2001-2023 Python Software Foundation, redistributed under the PSF "
    "License Agreement (accuracy/data/LICENSE-PSF.txt), which permits redistribution "
    "with the copyright notice and license retained."
)


def read_text(path: str | None) -> tuple[str, str]:
    """(text, label)."""
    if path is None:
        p = Path(str(resources.files("alisa.accuracy.data"))) / BUNDLED
        return p.read_text(), f"bundled {BUNDLED}"
    p = Path(path)
    if not p.is_file():
        raise InputError("text file does not exist", file=path, field="--text")
    try:
        return p.read_bytes().decode("utf-8"), str(p)
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (at byte offset {e.start})", file=path, field="--text") from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=path, field="--text") from None


def token_ids(text: str, tokenizer, vocab_size: int, n: int, label: str):
    import torch

    if tokenizer is None:  # byte-level ids for the random model
        ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long) % vocab_size
    else:
        ids = torch.tensor(tokenizer(text).input_ids, dtype=torch.long)
    if n > ids.numel():
        raise InputError(
            f"--tokens {n} is more than the text holds ({ids.numel()} tokens)", file=label, field="--tokens"
        )
    return ids[:n]
