"""``stockade serve``: start a domain gateway and run until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from gateway.errors import ConfigError
from gateway.flight_errors import TracebackFormatter
from gateway.settings import Settings

log = logging.getLogger("stockade")


def _admin_role(domain: object) -> str:
    roles = domain.policy.roles  # type: ignore[attr-defined]
    admins = [name for name, role in roles.items() if role.admin]
    if not admins:
        raise ConfigError("The policy has no admin role (a role with 'admin: true'); "
                          "add one, e.g. 'owner: {admin: true}'.")
    return "owner" if "owner" in admins else sorted(admins)[0]


def start_server(settings: Settings):  # type: ignore[no-untyped-def]
    """Open the domain and start its server; returns (server, domain, url, admin_password)."""
    from gateway.domain import Domain
    from gateway.engine import EngineLimits
    from gateway.server import DomainServer
    from gateway.state import ensure_admin

    domain = Domain.open(
        settings.policy, settings.data_dir,
        limits=EngineLimits(memory_limit=settings.memory_limit, threads=settings.threads,
                            dp_snapshot_check_s=settings.dp_snapshot_check_s),
        request_limits=settings.request_limits,
    )
    try:
        password = ensure_admin(
            domain.store, role=_admin_role(domain),
            password=os.environ.get("STOCKADE_ADMIN_PASSWORD"),
        )
        tls = None
        scheme = "grpc"
        if settings.tls_cert:
            assert settings.tls_key is not None
            try:
                tls = [(Path(settings.tls_cert).read_bytes(), Path(settings.tls_key).read_bytes())]
            except OSError as exc:
                raise ConfigError(f"Cannot read TLS certificate or key: {exc}") from None
            scheme = "grpc+tls"
        server = DomainServer(
            domain,
            f"{scheme}://{settings.host}:{settings.port}",
            token_ttl_s=settings.token_ttl_s,
            max_batch_bytes=settings.max_batch_bytes,
            max_pattern_length=settings.max_pattern_length,
            tls_certificates=tls,
        )
    except BaseException:
        domain.close()
        raise
    return server, domain, f"{scheme}://{settings.host}:{server.port}", password


def serve(settings: Settings) -> int:
    from gateway.cli import install_stop_signals

    for handler in logging.getLogger().handlers:
        handler.setFormatter(TracebackFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    server, domain, url, password = start_server(settings)
    stop = threading.Event()
    install_stop_signals(stop)
    if password:
        # stderr: stdout carries only the machine-readable "listening on" line.
        print(f"created admin user 'owner' with one-time password: {password}\n"
              "  (shown once; change it with `stockade users passwd owner`)",
              file=sys.stderr, flush=True)
    print(f"listening on {url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("shutting down", file=sys.stderr, flush=True)
        server.shutdown()
        domain.close()
    return 0
