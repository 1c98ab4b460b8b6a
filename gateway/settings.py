"""Every setting of a domain gateway, declared once.

Each setting has a name, a default, a type and a help text. Values come from,
in order of precedence: command-line flags, ``STOCKADE_<NAME>`` environment
variables, the defaults. A setting without a default must be given.

>>> s = load_settings({"policy": "p.yaml", "data_dir": "/tmp/x", "port": "0"}, env={})
>>> s.port, s.host
(0, '127.0.0.1')
>>> load_settings({}, env={})
Traceback (most recent call last):
...
gateway.errors.ConfigError: Setting 'policy' is missing and has no default: pass --policy FILE or set STOCKADE_POLICY.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gateway.errors import ConfigError
from gateway.flightsql.like import DEFAULT_MAX_PATTERN_LENGTH
from gateway.limits import RequestLimits

_REQUIRED = object()
_LIMITS = RequestLimits()  # the request limits' defaults, declared with the limits


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    cast: Callable[[str], Any]
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "STOCKADE_" + self.name.upper()


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("a port is between 0 and 65535")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return value


SETTINGS: tuple[Setting, ...] = (
    Setting("policy", _REQUIRED, str, "the policy YAML file", "FILE"),
    Setting("data_dir", _REQUIRED, str,
            "directory of the state store (users, tokens) and the engine's files", "DIR"),
    Setting("host", "127.0.0.1", str, "address to listen on"),
    Setting("port", 8815, _port, "port to listen on; 0 picks any free port"),
    Setting("tls_cert", None, str, "PEM certificate chain; with --tls-key, serve grpc+tls",
            "FILE"),
    Setting("tls_key", None, str, "PEM private key of --tls-cert", "FILE"),
    Setting("token_ttl_s", 3600, _positive, "lifetime of a bearer token, in seconds"),
    Setting("memory_limit", "4GB", str, "DuckDB memory limit for analyst queries"),
    Setting("threads", 2, _positive, "DuckDB threads for analyst queries"),
    Setting("max_batch_bytes", 4 * 1024 * 1024, _positive,
            "largest Arrow record batch sent to a client (ADBC refuses messages over 16 MiB)"),
    Setting("max_pattern_length", DEFAULT_MAX_PATTERN_LENGTH, _positive,
            "longest LIKE pattern accepted by GetDbSchemas/GetTables, in characters"),
    Setting("dp_snapshot_check_s", 60, _seconds,
            "how often the files behind dp tables' bounded samples are hashed again, to "
            "rebuild a sample when its source's content changed (0: never)"),
    Setting("max_query_bytes", _LIMITS.max_query_bytes, _positive,
            "longest SQL text accepted, in bytes"),
    Setting("max_query_nodes", _LIMITS.max_query_nodes, _positive,
            "most expression nodes in one query (planning time grows with them)"),
    Setting("max_query_depth", _LIMITS.max_query_depth, _positive,
            "deepest expression nesting in one query (an AND chain nests once per condition)"),
    Setting("max_parameter_rows", _LIMITS.max_parameter_rows, _positive,
            "most parameter rows bound to one prepared statement execution"),
    Setting("max_parameter_bytes", _LIMITS.max_parameter_bytes, _positive,
            "largest parameter batch bound to one prepared statement execution, in bytes"),
)


@dataclass(frozen=True)
class Settings:
    policy: str
    data_dir: str
    host: str
    port: int
    tls_cert: str | None
    tls_key: str | None
    token_ttl_s: int
    memory_limit: str
    threads: int
    max_batch_bytes: int
    max_pattern_length: int
    dp_snapshot_check_s: float
    max_query_bytes: int
    max_query_nodes: int
    max_query_depth: int
    max_parameter_rows: int
    max_parameter_bytes: int

    @property
    def request_limits(self) -> RequestLimits:
        """What one request may ask (:mod:`gateway.limits`)."""
        return RequestLimits.of(self)


def load_settings(given: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from ``given`` (flags), ``env`` and the defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = given.get(setting.name)
        source = setting.flag
        if raw is None and setting.env in env:
            raw, source = env[setting.env], setting.env
        if raw is None:
            if setting.default is _REQUIRED:
                metavar = f" {setting.metavar}" if setting.metavar else ""
                raise ConfigError(
                    f"Setting '{setting.name}' is missing and has no default: "
                    f"pass {setting.flag}{metavar} or set {setting.env}."
                )
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.cast(str(raw)) if not isinstance(raw, int) else raw
        except ValueError as exc:
            raise ConfigError(f"Bad value {raw!r} for {source}: {exc}") from None
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("TLS needs both --tls-cert and --tls-key.")
    assert {f.name for f in fields(Settings)} == set(values)
    return Settings(**values)
