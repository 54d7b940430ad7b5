"""What a main gateway Resume sends and where, sans-I/O (protocol-facts §1, Resume).

A resume reconnects to READY's ``resume_gateway_url`` with the same ``v``/``encoding`` query as
the original URL and sends op 6 ``{token, session_id, seq}``; the server replays the missed
dispatches and then dispatches RESUMED.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["resume_url"]


def resume_url(resume_gateway_url: str | None, original_url: str) -> str:
    """`resume_gateway_url` with the query of `original_url` (itself when there is none).

    A resume URL that is not ws:// or wss:// with a host is ignored (the original is used).
    """
    original = urlsplit(original_url)
    if not resume_gateway_url:
        return original_url
    try:
        parts = urlsplit(resume_gateway_url)
    except ValueError:
        return original_url
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        return original_url
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", original.query, ""))
