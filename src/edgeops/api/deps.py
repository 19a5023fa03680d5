"""Request dependencies shared by the routers."""

from __future__ import annotations

from typing import Any

from fastapi import Request


def workspace(request: Request) -> Any:
    return request.app.state.ws
