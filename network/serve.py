"""``stockade network --config network.yaml``: run a network node until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from gateway.errors import ConfigError
from gateway.flight_errors import TracebackFormatter
from network.config import NetworkConfig, load_config
from network.server import NetworkServer

log = logging.getLogger("stockade.network")


def start_network(config: NetworkConfig, *, host: str = "127.0.0.1", port: int = 0,
                  tls_cert: str | None = None, tls_key: str | None = None,
                  max_batch_bytes: int = 4 * 1024 * 1024) -> tuple[NetworkServer, str]:
    """Start the network's server; ``(server, url)``. Stop it with ``server.shutdown()``."""
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("TLS needs both --tls-cert and --tls-key.")
    tls = None
    scheme = "grpc"
    if tls_cert and tls_key:
        try:
            tls = [(Path(tls_cert).read_bytes(), Path(tls_key).read_bytes())]
        except OSError as exc:
            raise ConfigError(f"Cannot read TLS certificate or key: {exc}") from None
        scheme = "grpc+tls"
    server = NetworkServer(config, f"{scheme}://{host}:{port}", tls_certificates=tls,
                           max_batch_bytes=max_batch_bytes)
    return server, f"{scheme}://{host}:{server.port}"


def serve(config_path: str, *, host: str = "127.0.0.1", port: int = 8816,
          tls_cert: str | None = None, tls_key: str | None = None) -> int:
    from gateway.cli import install_stop_signals

    for handler in logging.getLogger().handlers:
        handler.setFormatter(TracebackFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    config = load_config(config_path)
    server, url = start_network(config, host=host, port=port, tls_cert=tls_cert,
                                tls_key=tls_key)
    stop = threading.Event()
    install_stop_signals(stop)
    print(f"network {config.name}: {len(config.domains)} domain(s): "
          f"{', '.join(d.name for d in config.domains)}", file=sys.stderr, flush=True)
    print(f"listening on {url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("shutting down", file=sys.stderr, flush=True)
        server.shutdown()
    return 0
