"""Placeholder until the stage is written (issue 8)."""

from __future__ import annotations

from postoffice.context import Context
from postoffice.filters.api import MessageStage


def build(ctx: Context) -> MessageStage | None:
    return None
