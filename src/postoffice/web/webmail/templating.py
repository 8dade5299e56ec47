"""Jinja2 rendering for webmail pages, each sent with the webmail Content-Security-Policy.

The policy allows scripts, styles and form targets from this origin only: no inline script
or style anywhere in the templates, so an injection that slips past escaping still cannot
run.  Frames are allowed from this origin because a message's HTML body is shown in a
sandboxed iframe served by its own route (see reading.py).
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

WEBMAIL_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " frame-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'"
)
_TEMPLATES: Final = str(resources.files("postoffice.web").joinpath("templates"))
# Built once: templates are package files that never change while the server runs.
_ENVIRONMENT: Final = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: Request, template: str, context: dict[str, object], status_code: int = 200
) -> Response:
    """`template` (under web/templates) with `context` plus `request` and `htmx` (whether
    htmx asked, so a template can answer with a fragment)."""
    htmx = request.headers.get("hx-request") == "true"
    body = _ENVIRONMENT.get_template(template).render({**context, "request": request, "htmx": htmx})
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={"content-security-policy": WEBMAIL_CSP, "cache-control": "no-store"},
    )
