"""API tokens: who may call the HTTP API, and with which role.

A token is ``eo_`` followed by 43 URL-safe characters from :func:`secrets.token_urlsafe`
(256 random bits). It is shown once, when it is created; the store keeps its SHA-256 and
what describes it (name, role, who created it and when, expiry, last use, revocation).
A fast hash is enough here: a random 256-bit secret cannot be guessed from its hash, and
slow password hashes (bcrypt, argon2) protect guessable secrets at a cost on every request.

Roles are ordered, each allowing what the one below allows: ``viewer`` reads (GET),
``operator`` also changes the fleet's data (labels, alert evaluation, predictions),
``admin`` also reads the audit log. A name belongs to one unrevoked token at a time, so a
token is rotated by revoking it and creating it again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Any

from . import audit
from .errors import Conflict, EdgeopsError, InvalidInput, NotFound

__all__ = [
    "PREFIX",
    "Forbidden",
    "Role",
    "TokenInfo",
    "TokenStore",
    "Unauthenticated",
    "hash_token",
    "parse_duration",
]

PREFIX = "eo_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_TOKEN_CHARS = 256
#: last use is written at most this often per token (a write per request would be a lot)
LAST_USED_RESOLUTION = timedelta(seconds=60)
_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_UNITS["w"] = timedelta(weeks=1)


class Unauthenticated(EdgeopsError):
    """No token, or one that is not valid (unknown, expired, revoked): HTTP 401."""

    exit_code = 2
    http_status = 401


class Forbidden(EdgeopsError):
    """A valid token whose role is below what the request needs: HTTP 403."""

    exit_code = 2
    http_status = 403


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidInput(
                f"unknown role {text!r}; use one of {', '.join(str(r) for r in cls)}"
            ) from None


def hash_token(token: str) -> str:
    """The SHA-256 (hex) that the store keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``90d`` or ``2w`` as a positive duration."""
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise InvalidInput(
            f"expiry {text!r} is not a positive duration; use e.g. 30m, 12h, 90d or 2w"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class TokenInfo:
    """What the store knows of a token (never the token itself)."""

    name: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or _now()):
            return "expired"
        return "active"

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": str(self.role),
            "status": self.status(now),
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=Role.parse(row.role),
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class TokenStore:
    """The API tokens of a store: create, list, revoke, and verify one a request sent."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def create(
        self,
        name: str,
        role: Role,
        expires_in: timedelta | None = None,
        *,
        now: datetime | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token for ``name`` and what is stored of it; the token is not kept."""
        from sqlalchemy import select

        from .store.schema import ApiToken

        if not NAME_RE.match(name or ""):
            raise InvalidInput(
                f"token name {name!r} is not valid; use letters, digits, '.', '_' or '-' "
                "(at most 64, starting with a letter or digit)"
            )
        now = now or _now()
        token = PREFIX + secrets.token_urlsafe(32)
        expires_at = now + expires_in if expires_in is not None else None

        def write(s: Any) -> TokenInfo:
            live = select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            if s.execute(live).first() is not None:
                raise Conflict(
                    f"a token named {name!r} exists; revoke it first "
                    f"(`edgeops tokens revoke {name}`) or choose another name"
                )
            row = ApiToken(
                name=name,
                token_sha256=hash_token(token),
                role=str(role),
                created_by=audit.actor()[:128],
                created_at=now,
                expires_at=expires_at,
            )
            s.add(row)
            s.flush()
            expiry = expires_at.isoformat() if expires_at else None
            audit.record(s, "token.create", name, {"role": str(role), "expires_at": expiry})
            return _info(row)

        return token, self.db.write(write)

    def list(self) -> list[TokenInfo]:
        """Every token, revoked and expired ones too, oldest first."""
        from sqlalchemy import select

        from .store.schema import ApiToken

        with self.db.session() as s:
            return [_info(r) for r in s.execute(select(ApiToken).order_by(ApiToken.id)).scalars()]

    def revoke(self, name: str, *, now: datetime | None = None) -> TokenInfo:
        """Revoke the unrevoked token called ``name``; it stops working at once."""
        from sqlalchemy import select

        from .store.schema import ApiToken

        def write(s: Any) -> TokenInfo:
            q = select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            row = s.execute(q).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no unrevoked token named {name!r}; see `edgeops tokens list`")
            row.revoked_at = now or _now()
            audit.record(s, "token.revoke", name, {"role": row.role})
            return _info(row)

        return self.db.write(write)

    def verify(self, token: str, *, now: datetime | None = None) -> TokenInfo:
        """The token's record if it is known, unexpired and unrevoked; else
        :class:`Unauthenticated`. Notes its last use (to the minute)."""
        from sqlalchemy import select

        from .store.schema import ApiToken

        if not token.startswith(PREFIX) or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthenticated(
                f"not an edgeops API token (they start with {PREFIX}); "
                "ask an admin for one (`edgeops tokens create`)"
            )
        now = now or _now()
        digest = hash_token(token)
        with self.db.session() as s:
            q = select(ApiToken).where(ApiToken.token_sha256 == digest)
            row = s.execute(q).scalar_one_or_none()
            if row is None:
                raise Unauthenticated(
                    "unknown token; ask an admin for one (`edgeops tokens create`)"
                )
            if row.revoked_at is not None:
                raise Unauthenticated(f"token {row.name!r} was revoked; ask an admin for a new one")
            if row.expires_at is not None and row.expires_at <= now:
                raise Unauthenticated(
                    f"token {row.name!r} expired at {row.expires_at:%Y-%m-%d %H:%M} UTC; "
                    "ask an admin for a new one"
                )
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
                row.last_used_at = now
            return _info(row)
