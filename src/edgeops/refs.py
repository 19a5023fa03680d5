"""References to versioned things: ``NAME``, ``NAME@VERSION`` and ``NAME@ALIAS``.

>>> Ref.parse("wrist@3")
Ref(name='wrist', version=3, alias=None)
>>> Ref.parse("wrist@production").alias
'production'
>>> Ref.parse("wrist").version is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidReference

__all__ = ["LATEST", "Ref", "check_alias", "check_name"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
LATEST = "latest"


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidReference(
            f"{what} {name!r} is not valid; use letters, digits, '.', '_' or '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias or "") or alias == LATEST:
        raise InvalidReference(
            f"alias {alias!r} is not valid; use lowercase letters, digits, '_' or '-', "
            "starting with a letter (and not 'latest', which always means the newest version)"
        )
    return alias


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        name, sep, tail = (text or "").strip().partition("@")
        check_name(name)
        if not sep:
            return cls(name)
        if re.fullmatch(r"v?[0-9]{1,9}", tail):
            version = int(tail.lstrip("v"))
            if version < 1:
                raise InvalidReference(f"{text!r}: versions start at 1")
            return cls(name, version=version)
        if tail == LATEST:
            return cls(name, alias=LATEST)
        if not ALIAS_RE.match(tail):
            raise InvalidReference(
                f"{text!r} is not NAME, NAME@VERSION or NAME@ALIAS; "
                "e.g. wrist@3 or wrist@production"
            )
        return cls(name, alias=tail)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name
