"""The network node's configuration file (``network.yaml``).

::

    version: 1
    network: {name: cancer_research_net, description: "Three hospitals"}
    domains:
      - {name: st_marys, url: "grpc://127.0.0.1:8815", timeout_s: 30}
      - {name: city_general, url: "grpc+tls://10.0.0.7:8815", tls_ca: certs/ca.pem}
      - {name: northern, url: "grpc://10.0.0.9:8815", domain_name: northern_clinic}
    settings: {health_interval_s: 10, metadata_cache_s: 30, max_parallel: 16}

``domain_name`` is the domain's own name (its policy's ``domain.name``) when the
network lists it under another name. The network never sends a domain the
analyst's password, but a credential derived from it for that name
(:mod:`gateway.network_keys`), which the domain checks against its own name; so
no two domains of a network may have the same ``domain_name`` (or ``name``, when
``domain_name`` is not given).

Every error names the file and line and, for a misspelt key, the key meant:

>>> load_config_text("version: 1\\nnetwork: {name: n}\\ndomains:\\n  - {name: a, ur: x}\\n",
...                  file="network.yaml")
Traceback (most recent call last):
...
gateway.errors.ConfigError: network.yaml:4: domains[0]: Unknown key 'ur'. Did you mean 'url'?
>>> c = load_config_text("version: 1\\nnetwork: {name: n}\\n"
...                      "domains: [{name: a, url: 'grpc://127.0.0.1:1'}]")
>>> c.domains[0].timeout_s, c.settings.health_interval_s
(30.0, 10.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway.errors import ConfigError, did_you_mean
from gateway.flightsql.like import DEFAULT_MAX_PATTERN_LENGTH
from gateway.limits import RequestLimits

#: The virtual catalog of federated queries; no domain may take its name.
FEDERATED = "federated"
_LIMITS = RequestLimits()  # the request limits' defaults, declared with the limits
_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_URL = re.compile(r"\Agrpc(\+tls|\+tcp)?://[^/\s]+:\d+/?\Z")


@dataclass(frozen=True)
class DomainConfig:
    """One domain of the network: its name in the network, Flight URL, timeout, TLS CA,
    and its own name if that differs.

    >>> DomainConfig("northern", "grpc://h:1", domain_name="northern_clinic").own_name
    'northern_clinic'
    >>> DomainConfig("st_marys", "grpc://h:1").own_name
    'st_marys'
    """

    name: str
    url: str
    timeout_s: float = 30.0
    tls_ca: str | None = None  # path of a PEM file (resolved against the config file)
    domain_name: str | None = None  # its policy's domain.name, if not ``name``

    @property
    def own_name(self) -> str:
        """The name the domain gives itself: the analyst's credentials are derived for it."""
        return self.domain_name or self.name

    def tls_root_certs(self) -> bytes | None:
        """The PEM bytes of ``tls_ca``, or None."""
        if self.tls_ca is None:
            return None
        try:
            return Path(self.tls_ca).read_bytes()
        except OSError as exc:
            raise ConfigError(f"Cannot read tls_ca of domain '{self.name}' "
                              f"({self.tls_ca}): {exc.strerror or exc}") from None


@dataclass(frozen=True)
class NetworkSettings:
    """How the network behaves; every key is optional in ``settings:``."""

    health_interval_s: float = 10.0  # seconds between two health checks of each domain
    metadata_cache_s: float = 30.0  # how long a domain's catalog (per analyst) is reused
    max_parallel: int = 16  # most domain calls in flight at once, across all queries
    session_ttl_s: float = 3600.0  # lifetime of an analyst's network session (and password)
    rejection_memory_s: float = 300.0  # how long a domain's refusal of a password is trusted
    max_pattern_length: int = DEFAULT_MAX_PATTERN_LENGTH  # longest catalog LIKE pattern
    # What one request may carry (gateway.limits; the same defaults as a domain gateway).
    max_query_bytes: int = _LIMITS.max_query_bytes
    max_query_nodes: int = _LIMITS.max_query_nodes
    max_query_depth: int = _LIMITS.max_query_depth
    max_parameter_rows: int = _LIMITS.max_parameter_rows
    max_parameter_bytes: int = _LIMITS.max_parameter_bytes

    @property
    def request_limits(self) -> RequestLimits:
        return RequestLimits.of(self)


SETTING_KEYS = tuple(NetworkSettings.__dataclass_fields__)
_WHOLE_NUMBERS = ("max_parallel", "max_pattern_length", "max_query_bytes", "max_query_nodes",
                  "max_query_depth", "max_parameter_rows", "max_parameter_bytes")


@dataclass(frozen=True)
class NetworkConfig:
    """A whole ``network.yaml``."""

    name: str
    description: str = ""
    domains: tuple[DomainConfig, ...] = ()
    settings: NetworkSettings = field(default_factory=NetworkSettings)
    file: str | None = None

    def domain(self, name: str) -> DomainConfig:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(name)


class _Node:
    """A YAML node and where it is, for messages ``file:line: path: message``."""

    def __init__(self, node: yaml.Node, path: str, file: str | None) -> None:
        self.node = node
        self.path = path
        self.file = file

    def error(self, message: str, node: yaml.Node | None = None) -> ConfigError:
        line = int((node or self.node).start_mark.line) + 1
        where = f"{self.file}:{line}: " if self.file else f"line {line}: "
        return ConfigError(where + (f"{self.path}: " if self.path else "") + message)

    def mapping(self, allowed: Collection[str], required: Collection[str] = ()) -> dict[
            str, _Node]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"Expected a mapping with keys {', '.join(allowed)}")
        out: dict[str, _Node] = {}
        for key_node, value in self.node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f" Allowed keys: {', '.join(allowed)}"
                raise self.error(f"Unknown key '{key}'.{hint}", key_node)
            if key in out:
                raise self.error(f"Duplicate key '{key}'", key_node)
            out[key] = _Node(value, f"{self.path}.{key}" if self.path else key, self.file)
        for key in required:
            if key not in out:
                raise self.error(f"Missing required key '{key}'")
        return out

    def items(self) -> list[_Node]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error("Expected a list")
        return [_Node(n, f"{self.path}[{i}]", self.file) for i, n in enumerate(self.node.value)]

    def value(self) -> object:
        return yaml.constructor.SafeConstructor().construct_object(self.node, deep=True)

    def text(self) -> str:
        value = self.value()
        if not isinstance(value, str):
            raise self.error(f"Expected text, got {value!r}")
        return value

    def number(self) -> float:
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            raise self.error(f"Expected a number > 0, got {value!r}")
        return float(value)

    def count(self) -> int:
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(f"Expected a whole number >= 1, got {value!r}")
        return value


def check_name(name: str) -> str:
    """A network or domain name: an identifier (letters, digits, ``_``)."""
    if not _NAME.match(name):
        raise ConfigError(f"'{name}' is not a valid name; use letters, digits and '_' "
                          "(not starting with a digit)")
    return name


def load_config(path: str | Path) -> NetworkConfig:
    """Read and check the network configuration at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"Cannot read the network config {p}: {reason}") from None
    return load_config_text(text, file=str(p), base_dir=p.resolve().parent)


def load_config_text(text: str, *, file: str | None = None,
                     base_dir: Path | None = None) -> NetworkConfig:
    """Check the network configuration ``text``; ``tls_ca`` paths resolve against ``base_dir``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{file or 'network config'}:{mark.line + 1}" if mark else (file or "config")
        raise ConfigError(f"{where}: Not valid YAML: {getattr(err, 'problem', err)}") from None
    if root is None:
        raise ConfigError(f"{file or 'The network config'}: the file is empty")
    top = _Node(root, "", file).mapping(("version", "network", "domains", "settings"),
                                        required=("version", "network", "domains"))
    version = top["version"].value()
    if version != 1:
        raise top["version"].error(f"Unsupported version {version!r}; this network reads 1")
    net = top["network"].mapping(("name", "description"), required=("name",))
    name = _named(net["name"])
    description = net["description"].text() if "description" in net else ""
    domains: list[DomainConfig] = []
    seen: dict[str, str] = {}
    owners: dict[str, str] = {}  # own name (lower case) → the entry that has it
    for item in top["domains"].items():
        entries = item.mapping(("name", "url", "timeout_s", "tls_ca", "domain_name"),
                               required=("name", "url"))
        dname = _named(entries["name"])
        if dname.lower() == FEDERATED:
            raise entries["name"].error(f"'{FEDERATED}' is the network's virtual catalog of "
                                        "federated queries; give the domain another name")
        if dname.lower() in seen:
            raise entries["name"].error(f"Duplicate domain name '{dname}' (also "
                                        f"{seen[dname.lower()]})")
        seen[dname.lower()] = item.path
        url = entries["url"].text().strip()
        if not _URL.match(url):
            raise entries["url"].error(f"'{url}' is not a Flight URL; write grpc://HOST:PORT "
                                       "or grpc+tls://HOST:PORT")
        tls_ca = None
        if "tls_ca" in entries:
            ca = Path(entries["tls_ca"].text())
            tls_ca = str(ca if ca.is_absolute() or base_dir is None else base_dir / ca)
            if not url.startswith("grpc+tls://"):
                raise entries["tls_ca"].error("tls_ca is for a grpc+tls:// domain")
        timeout = entries["timeout_s"].number() if "timeout_s" in entries else 30.0
        own = _named(entries["domain_name"]) if "domain_name" in entries else None
        own_key = (own or dname).lower()
        if own_key in owners:
            raise (entries["domain_name"] if own else entries["name"]).error(
                f"Two domains would be sent credentials derived for the name '{own or dname}' "
                f"(also {owners[own_key]}): each domain_name (by default the name) must be "
                "unique, or what one domain receives would be valid at the other")
        owners[own_key] = item.path
        domains.append(DomainConfig(dname, url, timeout, tls_ca, own))
    if not domains:
        raise top["domains"].error("List at least one domain")
    settings = NetworkSettings()
    if "settings" in top:
        entries = top["settings"].mapping(SETTING_KEYS)
        values: dict[str, float | int] = {
            key: (node.count() if key in _WHOLE_NUMBERS else node.number())
            for key, node in entries.items()
        }
        settings = NetworkSettings(**values)  # type: ignore[arg-type]
    return NetworkConfig(name, description, tuple(domains), settings, file)


def _named(node: _Node) -> str:
    try:
        return check_name(node.text())
    except ConfigError as exc:
        raise node.error(str(exc)) from None
