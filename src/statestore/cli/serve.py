"""``statestore serve``: the read-only web view (:mod:`statestore.web`), loaded only when run."""

from __future__ import annotations

import argparse
import importlib
import ipaddress

from ..storage import redact_url
from ._common import EXIT_OK, CliError, Commands, open_store
from .output import Output

__all__ = ["register"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def register(commands: Commands) -> None:
    """Add ``serve``."""
    parser = commands.add(
        "serve",
        "a read-only web view of the store's runs, savepoints and diffs (127.0.0.1 by default)",
        "statestore serve --url sqlite:///statestore.db\nstatestore serve --port 9000",
        serve,
        json=False,
        description="Serve a read-only web view of the store: its runs, each run's savepoint "
        "timeline, a savepoint's entities, a diff of two savepoints, verify. It binds "
        f"{DEFAULT_HOST} (only this machine can connect) unless --host says otherwise, and "
        "answers only requests that name it by a loopback name, --host or --allow-host "
        "(a guard against DNS rebinding). Needs the web extra: pip install 'statestore[web]'.",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"the address to bind (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the port (default: {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--allow-host",
        metavar="NAME",
        action="append",
        default=[],
        help="also answer requests for this host name (repeatable), e.g. the machine's name "
        "when binding 0.0.0.0",
    )


def serve(args: argparse.Namespace, out: Output) -> int:
    """``statestore serve``: runs until interrupted."""
    try:
        uvicorn = importlib.import_module("uvicorn")
        web = importlib.import_module("statestore.web")
    except ModuleNotFoundError as exc:
        raise CliError(
            f"statestore serve needs the web extra ({exc.name} is missing): "
            "pip install 'statestore[web]'"
        ) from None
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be 1 to 65535, not {args.port}", 2)
    store = redact_url(args.url)
    hosts = [*args.allow_host]
    if not _wildcard(args.host):
        hosts.append(args.host)
    with open_store(args.url) as storage:
        app = web.create_app(storage, store=store, allowed_hosts=hosts)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        out.line(f"serving {store} read-only at http://{shown}:{args.port}/ (Ctrl-C stops)")
        if _loopback(args.host):
            out.line(f"bound to {args.host}: only this machine can connect")
        else:
            out.line(
                f"bound to {args.host}: other machines can connect and read every state; "
                "there is no login"
            )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")  # noqa: S104 - recognised, not bound, here


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
