"""``stockade console``: the owner's web console (Streamlit, ``ui/``) for a running gateway.

The console is a separate process: Streamlit serving ``ui/app.py``, which talks
to the gateway at ``--gateway`` through its actions only. This command starts
it, waits until it answers, prints ``console listening on http://HOST:PORT`` on
stdout (Streamlit's own output goes to stderr) and stops it on Ctrl-C or
SIGTERM.

>>> command = console_command("grpc://127.0.0.1:8815", "127.0.0.1", 8501)
>>> command[1:4], Path(command[4]).name, command[-3:]
(['-m', 'streamlit', 'run'], 'app.py', ['--', '--gateway', 'grpc://127.0.0.1:8815'])
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, UnavailableError

#: The console's entry point (in the ``ui`` package, next to ``gateway``).
ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "ui" / "app.py"
DEFAULT_PORT = 8501
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def add_console_parser(sub: Any) -> None:
    """Add ``stockade console`` to the ``stockade`` command's subcommands (``sub``)."""
    console = sub.add_parser(
        "console", help="run the owner's web console for a running gateway",
        description="Start the data owner's web console (Streamlit) for the gateway at "
                    "--gateway and print 'console listening on http://HOST:PORT' once it "
                    "answers. Log in there as an owner. Ctrl-C stops it.")
    console.add_argument("--gateway", metavar="URL",
                         default=os.environ.get("STOCKADE_GATEWAY", "grpc://127.0.0.1:8815"),
                         help="the gateway's URL, grpc://HOST:PORT or grpc+tls://HOST:PORT "
                              "(default: $STOCKADE_GATEWAY, else grpc://127.0.0.1:8815)")
    console.add_argument("--host", default="127.0.0.1",
                         help="address the console listens on (default: 127.0.0.1)")
    console.add_argument("--port", type=int, default=DEFAULT_PORT,
                         help=f"port of the console (default: {DEFAULT_PORT}; 0 picks a free one)")
    console.add_argument("--tls-ca", metavar="FILE",
                         help="PEM of the CA to trust for a grpc+tls gateway with a private "
                              "certificate")
    console.add_argument("--network", metavar="URL", default=os.environ.get("STOCKADE_NETWORK"),
                         help="a network node whose domains' health the Network page shows "
                              "(default: $STOCKADE_NETWORK)")
    console.set_defaults(func=run_console)


def console_command(gateway: str, host: str, port: int, tls_ca: str | None = None,
                    network: str | None = None) -> list[str]:
    """The Streamlit command line that serves the console."""
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.port", str(port), "--server.address", host,
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--server.runOnSave", "false",
               "--client.toolbarMode", "minimal",
               "--", "--gateway", gateway]
    if tls_ca:
        command += ["--tls-ca", tls_ca]
    if network:
        command += ["--network", network]
    return command


def _check(gateway: str, port: int, tls_ca: str | None) -> None:
    if not gateway.startswith(("grpc://", "grpc+tls://")):
        raise ConfigError(f"Bad --gateway {gateway!r}: use grpc://HOST:PORT or "
                          "grpc+tls://HOST:PORT (the URL `stockade serve` prints).")
    if not 0 <= port <= 65535:
        raise ConfigError(f"Bad --port {port}: a port is between 0 and 65535.")
    if tls_ca is not None and not Path(tls_ca).is_file():
        raise ConfigError(f"Bad --tls-ca {tls_ca!r}: no such file.")


def free_port(host: str) -> int:
    """A port nobody listens on now (for ``--port 0``; Streamlit needs a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S
               ) -> None:
    """Wait until Streamlit answers its health check at ``url`` (or gives up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UnavailableError(f"The console stopped at start (exit code {proc.returncode}); "
                                   "see the messages above.")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=1.0) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise UnavailableError(f"The console did not answer at {url} within {timeout_s:.0f} s.")


def stop_console(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_console(gateway: str, host: str, port: int, tls_ca: str | None = None,
                  network: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start the console for ``gateway`` and wait until it answers: (process, its URL).

    Stop it with :func:`stop_console`.
    """
    _check(gateway, port, tls_ca)
    port = port or free_port(host)
    env = dict(os.environ)
    # ui/ imports gateway/: both must be importable wherever the console is started from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    try:
        out: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr without a file
        out = None
    proc = subprocess.Popen(console_command(gateway, host, port, tls_ca, network),
                            env=env, stdin=subprocess.DEVNULL, stdout=out)
    try:
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        wait_ready(f"http://{shown}:{port}", proc)
    except BaseException:
        stop_console(proc)
        raise
    return proc, f"http://{host}:{port}"


def run_console(args: argparse.Namespace) -> int:
    """Serve the console until Ctrl-C/SIGTERM (or until Streamlit stops by itself)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    proc, url = start_console(args.gateway, args.host, args.port, args.tls_ca, args.network)
    try:
        print(f"console listening on {url}", flush=True)
        while not stop.wait(0.5):
            if proc.poll() is not None:
                return proc.returncode or 0
    except KeyboardInterrupt:
        pass
    finally:
        stop_console(proc)
    print("console stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.cli_console --gateway URL …`` (the same as ``stockade console``)."""
    parser = argparse.ArgumentParser(prog="stockade")
    add_console_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["console", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
