"""Who can reach a server: its bind address and api key; and the HTTP calls alignflow makes to a server."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import urllib.request

from alignflow.errors import ConfigError

KEY_SOURCE = r"^(env|secret):[A-Za-z0-9_.-]+$"  # where an api key comes from; the key itself is never written


def bind_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """The addresses a server bound to `host` listens on, as this machine resolves them; None when the name
    does not resolve. '[::1]' -> [::1]; 'localhost' -> [127.0.0.1, ::1]; '' -> [0.0.0.0] (every interface)."""
    try:
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return [ipaddress.ip_address(literal or "0.0.0.0")]
    except ValueError:
        pass  # a name
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # no such name; a label too long; a NUL byte
        return None
    return [ipaddress.ip_address(info[4][0]) for info in found]


def is_loopback(host: str) -> bool:
    """Only this machine can reach a server bound to `host`: every address it resolves to is loopback.
    '127.0.0.1', '::1', 'localhost': yes; '0.0.0.0', '::', '' (every interface), 'localhost.example': no."""
    addresses = bind_addresses(host)
    return bool(addresses) and all(address.is_loopback for address in addresses)


def exposure_problems(host: str, api_key: str | None) -> list[str]:
    """A server without a key must be bound where only this machine reaches it: every address `host`
    resolves to is loopback (`localhost.example.com` is a name like any other)."""
    if api_key:
        return []
    addresses, shown = bind_addresses(host), host or "'' (every interface)"
    fix = "set stages.deploy.api_key (env:VARIABLE or secret:BLOCK), or bind 127.0.0.1"
    if addresses is None:
        return [f"stages.deploy.host: {shown} could not be resolved here, so it cannot be shown to be "
                f"loopback; {fix}"]
    if not all(address.is_loopback for address in addresses):
        return [f"stages.deploy.host: {shown} exposes the server beyond this machine without an api key; {fix}"]
    return []


def endpoint_root(host: str, port: int) -> str:
    """Where clients on this machine reach a server bound to `host`."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def resolve_key(source: str | None) -> str | None:
    """The api key named by `env:VARIABLE` or `secret:BLOCK` (a Prefect Secret block); None for none."""
    if not source:
        return None
    kind, _, name = source.partition(":")
    if kind == "env":
        key = os.environ.get(name)
        if not key:
            raise ConfigError(f"stages.deploy.api_key: the environment variable {name} is not set or empty; "
                              f"export {name}=... where the run and `alignflow serve` run", "spec")
        return key
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except ValueError as exc:
        raise ConfigError(f"stages.deploy.api_key: no Prefect Secret block named {name!r} ({exc}); create it "
                          f"with `prefect block create secret` or in the dashboard (Blocks)", "spec") from None


def http_json(url: str, payload: dict | None = None, timeout: float = 5.0, key: str | None = None) -> dict:
    """GET (or POST `payload` to) `url` with the bearer `key`; the answer's JSON, or {"text": body}."""
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"text": body.decode(errors="replace")}


def http_text(url: str, timeout: float = 5.0) -> str | None:
    """The body at `url` as text, or None when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode(errors="replace")
    except (OSError, ValueError):
        return None
