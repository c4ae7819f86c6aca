"""Turn pydantic validation errors into InputError naming the file and field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InputError

M = TypeVar("M", bound=BaseModel)


def _loc(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-after"))]
    dotted = ".".join(parts)
    return f"{prefix}.{dotted}" if prefix and dotted else (prefix or dotted)


def validate_model(cls: type[M], data: Any, *, file: str | None, prefix: str = "") -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        reason = first["msg"]
        if first["type"] == "extra_forbidden":
            reason = "unknown field"
        more = len(e.errors()) - 1
        if more:
            reason += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise InputError(reason, file=file, field=_loc(tuple(first["loc"]), prefix) or None) from None
