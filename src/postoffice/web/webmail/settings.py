"""Account settings: password, vacation reply and filing rules, client set-up profile.

The vacation reply and the rules become one Sieve script named "webmail", stored and
activated through `store.sieve` like a ManageSieve upload, so delivery runs them the same
way.  The form's own values ride along in the script's first line (a JSON comment), so the
form shows what was saved without parsing Sieve back.  A user with a script of their own
from a ManageSieve client would lose it as the active one: the page says so.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Final
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.auth.authenticator import AuthSuccess
from postoffice.auth.passwords import hash_password, scram_sha256_record
from postoffice.filters.sieve import SieveError, check_script
from postoffice.web.webmail.folders import render_page
from postoffice.web.webmail.session import (
    WebUser,
    checked_form,
    client_ip,
    context_of,
    end_other_sessions,
    require_user,
)

SCRIPT_NAME: Final = "webmail"
SETTINGS_MARK: Final = "# webmail-settings: "
MAX_RULES: Final = 10
RULE_FIELDS: Final = ("from", "to", "subject")
MIN_PASSWORD: Final = 8


@dataclass
class Rule:
    field: str  # one of RULE_FIELDS
    contains: str
    folder: str


@dataclass
class SieveSettings:
    vacation_enabled: bool = False
    vacation_subject: str = ""
    vacation_body: str = ""
    vacation_days: int = 7
    rules: list[Rule] = field(default_factory=list)

    @classmethod
    def from_script(cls, script: str | None) -> SieveSettings:
        if script is None or not script.startswith(SETTINGS_MARK):
            return cls()
        try:
            data = json.loads(script.partition("\n")[0].removeprefix(SETTINGS_MARK))
            rules = [Rule(**rule) for rule in data.pop("rules")]
            return cls(**data, rules=rules)
        except (ValueError, TypeError, KeyError):
            return cls()

    def to_script(self) -> str:
        """The Sieve script (RFC 5228, with fileinto and RFC 5230 vacation)."""
        lines = [SETTINGS_MARK + json.dumps(asdict(self), ensure_ascii=True)]
        lines.append('require ["fileinto", "vacation"];')
        # The reply first: the rules' `stop` must not keep filed mail from being answered.
        if self.vacation_enabled:
            subject = f" :subject {_quote(self.vacation_subject)}" if self.vacation_subject else ""
            lines.append(
                f"vacation :days {self.vacation_days}{subject} {_quote(self.vacation_body)};"
            )
        for rule in self.rules:
            lines.append(
                f"if header :contains {_quote(rule.field)} {_quote(rule.contains)}"
                f" {{ fileinto {_quote(rule.folder)}; stop; }}"
            )
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A Sieve quoted string (RFC 5228 §2.4.2): backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sieve_settings_from(form: FormData) -> SieveSettings:
    rules = []
    for index in range(MAX_RULES):
        contains = str(form.get(f"rule{index}_contains", "")).strip()
        folder = str(form.get(f"rule{index}_folder", "")).strip()
        field_name = str(form.get(f"rule{index}_field", "from"))
        if contains and folder and field_name in RULE_FIELDS:
            rules.append(Rule(field_name, contains, folder))
    days = str(form.get("vacation_days", "7"))
    return SieveSettings(
        vacation_enabled=form.get("vacation_enabled") == "on",
        vacation_subject=str(form.get("vacation_subject", "")).strip(),
        vacation_body=str(form.get("vacation_body", "")),
        vacation_days=min(max(int(days), 1), 365) if days.isdigit() else 7,
        rules=rules,
    )


async def show(request: Request) -> Response:
    user = await require_user(request)
    return await _page(request, user, {})


async def change_password(request: Request) -> Response:
    user, form = await checked_form(request)
    ctx = context_of(request)
    new = str(form.get("new", ""))
    if new != str(form.get("confirm", "")):
        return await _page(request, user, {"error": "The new passwords differ."}, 400)
    if len(new) < MIN_PASSWORD:
        return await _page(
            request, user, {"error": f"A password has at least {MIN_PASSWORD} characters."}, 400
        )
    # Checked like a login, so this form cannot be used to guess the password unthrottled.
    result = await ctx.authenticator.authenticate_password(
        user.address, str(form.get("current", "")), client_ip(request)
    )
    if not isinstance(result, AuthSuccess):
        return await _page(request, user, {"error": "The current password is wrong."}, 403)
    password_hash, scram = await asyncio.to_thread(_credentials, new)
    await ctx.store.set_password(user.address, password_hash, scram)
    await end_other_sessions(request, user.account_id)
    return await _page(request, user, {"notice": "Password changed."})


async def save_junk(request: Request) -> Response:
    user, form = await checked_form(request)
    text = str(form.get("threshold", "")).strip()
    try:
        threshold = None if not text else float(text)
    except ValueError:
        threshold = -1.0
    if threshold is not None and not 0.0 < threshold <= 1.0:
        return await _page(request, user, {"error": "The threshold is between 0 and 1."}, 400)
    await context_of(request).store.junk.set_threshold(user.account_id, threshold)
    return await _page(request, user, {"notice": "Junk filter saved."})


async def save_sieve(request: Request) -> Response:
    user, form = await checked_form(request)
    ctx = context_of(request)
    script = sieve_settings_from(form).to_script()
    try:
        # The same check as a ManageSieve upload: a script delivery cannot run is not stored.
        check_script(script)
    except SieveError as e:
        return await _page(request, user, {"error": f"Could not save the rules: {e}"}, 400)
    await ctx.store.sieve.put(user.account_id, SCRIPT_NAME, script)
    await ctx.store.sieve.activate(user.account_id, SCRIPT_NAME)
    if request.headers.get("hx-request") == "true":
        return await _page(request, user, {"notice": "Saved."})
    return RedirectResponse("/settings", 303)


async def _page(
    request: Request, user: WebUser, context: dict[str, object], status_code: int = 200
) -> Response:
    ctx = context_of(request)
    saved = SieveSettings.from_script(await ctx.store.sieve.get(user.account_id, SCRIPT_NAME))
    active = await ctx.store.sieve.active(user.account_id)
    totals = await ctx.store.junk.totals(user.account_id)
    return await render_page(
        request,
        user,
        "webmail/settings.html",
        {
            "sieve": saved,
            "rule_rows": saved.rules + [Rule("from", "", "")] * (MAX_RULES - len(saved.rules)),
            "rule_fields": RULE_FIELDS,
            "junk": totals,
            "junk_default": ctx.config.junk.threshold,
            "other_script": active[0] if active and active[0] != SCRIPT_NAME else None,
            "mobileconfig_url": _mobileconfig_url(user),
            **context,
        },
        status_code,
    )


def _mobileconfig_url(user: WebUser) -> str:
    return "/mobileconfig?" + urlencode({"emailaddress": user.address})


def _credentials(password: str) -> tuple[str, str | None]:
    try:
        scram = scram_sha256_record(password)
    except ValueError:
        scram = None  # SASLprep forbids it: PLAIN and LOGIN still work
    return hash_password(password), scram


def routes() -> list[BaseRoute]:
    return [
        Route("/settings", show, methods=["GET"]),
        Route("/settings/password", change_password, methods=["POST"]),
        Route("/settings/junk", save_junk, methods=["POST"]),
        Route("/settings/sieve", save_sieve, methods=["POST"]),
    ]
