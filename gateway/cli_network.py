"""``stockade network``: run a network node, or show a running one's health.

``stockade network --config network.yaml [--host H] [--port P]`` serves the
network and prints ``listening on grpc://HOST:PORT``; ``stockade network status
--url URL`` logs in to the network (``--user``, the password as for every ``--url``
command: :mod:`gateway.cli_remote`), prints each domain's health and exits 1 when
a domain is not up.

>>> print(status_table({"network": "net", "domains": [
...     {"name": "a", "url": "grpc://h:1", "state": "up", "latency_ms": 1.5,
...      "checked_at": 0, "error": None}]}, now=3.0))
network net: 1 of 1 domain(s) up
DOMAIN  STATE  LATENCY  CHECKED  URL         ERROR
a       up     1.5 ms   3 s ago  grpc://h:1
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.remote import GatewayClient


def add_network_parser(sub: Any) -> None:
    network = sub.add_parser(
        "network", help="run a network node over several domains, or show its health",
        description="Run a network node: one Flight SQL endpoint in front of the domains of "
                    "--config (routing, federated aggregates, dataset search). "
                    "`stockade network status --url URL` shows a running network's health.")
    network.add_argument("--config", metavar="FILE", help="the network YAML file")
    network.add_argument("--host", default="127.0.0.1", help="address to listen on "
                                                             "(default: 127.0.0.1)")
    network.add_argument("--port", type=int, default=8816,
                         help="port to listen on; 0 picks any free port (default: 8816)")
    network.add_argument("--tls-cert", metavar="FILE",
                         help="PEM certificate chain; with --tls-key, serve grpc+tls")
    network.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    network.set_defaults(func=_cmd_network)
    network_sub = network.add_subparsers(dest="network_command", metavar="ACTION")
    status = network_sub.add_parser(
        "status", help="show each domain's health as a running network sees it",
        description="Log in to a running network and show its domains' health. "
                    "Exit 0 when every domain is up, 1 otherwise, 2 on an error.")
    from gateway.cli_remote import add_remote_options

    add_remote_options(status, required=True, kind="network")
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(func=_cmd_status)


def _cmd_network(args: argparse.Namespace) -> int:
    from network.serve import serve

    if not args.config:
        raise ConfigError("Give the network's configuration: stockade network --config "
                          "network.yaml (or `stockade network status --url URL`).")
    return serve(args.config, host=args.host, port=args.port, tls_cert=args.tls_cert,
                 tls_key=args.tls_key)


def fetch_status(client: GatewayClient) -> Any:
    """The ``stockade.network.status`` answer of the network ``client`` is logged in to."""
    return client.action("stockade.network.status")


def status_table(status: dict[str, Any], *, now: float | None = None) -> str:
    """The status as a table for people."""
    from gateway.cli_remote import format_table

    now = time.time() if now is None else now
    rows = []
    for d in status["domains"]:
        latency = f"{d['latency_ms']:.1f} ms" if d.get("latency_ms") is not None else "-"
        checked = (f"{max(0, now - d['checked_at']):.0f} s ago"
                   if d.get("checked_at") is not None else "never")
        rows.append((d["name"], d["state"], latency, checked, d["url"], d.get("error") or ""))
    up = sum(1 for d in status["domains"] if d["state"] == "up")
    head = f"network {status['network']}: {up} of {len(rows)} domain(s) up"
    return head + "\n" + format_table(
        ("DOMAIN", "STATE", "LATENCY", "CHECKED", "URL", "ERROR"), rows)


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.cli_remote import connect

    with connect(args, kind="network") as client:
        status = fetch_status(client)
    if args.format == "json":
        print(json.dumps(status, indent=2))
    else:
        print(status_table(status))
    return 0 if all(d["state"] == "up" for d in status["domains"]) else 1
