"""Endpoint addresses (sans-IO): what a peer said, as this side can reach it."""

from __future__ import annotations

from urllib.parse import urlsplit


def public_endpoint(endpoint: str, seen_as: str) -> str:
    """``endpoint`` with a wildcard host replaced by the host of ``seen_as`` (the address
    this one was learned from: a server bound to ``tcp://*:5571`` is reached where
    ``seen_as`` reached its peer)."""
    host = urlsplit(endpoint).hostname
    if host in ("0.0.0.0", "*", "::", None):
        port = endpoint.rsplit(":", 1)[1]
        return f"tcp://{urlsplit(seen_as).hostname}:{port}"
    return endpoint
