"""Placeholder until the stage is written (issue 8)."""

from __future__ import annotations

from postoffice.context import Context
from postoffice.filters.api import SessionStage


def build(ctx: Context) -> SessionStage | None:
    return None
