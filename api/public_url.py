"""The URL a provider called, which is the URL it signed (Twilio signs the full public URL)."""

from __future__ import annotations

from starlette.requests import Request

from intake.settings import Settings


def _first(value: str | None) -> str | None:
    # Each proxy in a chain appends its own value; the first is what the client sent.
    return value.split(",")[0].strip() if value else None


def public_url(request: Request, settings: Settings) -> str:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if settings.public_url:
        return settings.public_url + path
    if settings.trust_proxy:
        scheme = _first(request.headers.get("x-forwarded-proto")) or request.url.scheme
        host = _first(request.headers.get("x-forwarded-host")) or request.headers.get("host")
        if host:
            return f"{scheme}://{host}{path}"
    return str(request.url)
