"""Users' Sieve scripts (RFC 5228 and extensions): checking them and running them at delivery.

ManageSieve (RFC 5804) advertises `SIEVE_EXTENSIONS` and refuses, with `check_script`'s
SieveError, a script we could not run; `build` makes the recipient stage that runs the
account's active script against each message it receives.
"""

from __future__ import annotations

from postoffice.context import Context
from postoffice.filters.api import RecipientStage
from postoffice.filters.sieve.script import SIEVE_EXTENSIONS, SieveError, check_script
from postoffice.filters.sieve.stage import SieveFilter

__all__ = ["SIEVE_EXTENSIONS", "SieveError", "SieveFilter", "build", "check_script"]


def build(ctx: Context) -> RecipientStage | None:
    config = ctx.config.sieve
    if not config.enabled:
        return None
    return SieveFilter(ctx.store, config, ctx.clock, ctx.logger("sieve"))
