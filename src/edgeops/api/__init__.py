"""The HTTP API and dashboard (FastAPI): ``create_app(workspace)``; ``edgeops serve`` runs it."""

from .app import create_app

__all__ = ["create_app"]
