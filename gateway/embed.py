"""A gateway inside a Python program: :func:`gateway.serve`.

For notebooks and services that hold their data as frames::

    import gateway
    with gateway.serve("policy.yaml", tables={"oncology.screenings": df}) as gw:
        gw.add_user("ana", "analyst", "a long passphrase", {"site": "north"})
        with gw.connect("ana", "a long passphrase") as conn:
            ...

The policy declares every served table; a table given as a frame is declared
with ``source: {format: memory}`` (see :mod:`connectors.memory`). Queries go
through the same Flight SQL server, policy pipeline, ledger and audit log as a
gateway started with ``stockade serve``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

import connectors
from connectors.memory import FRAME_TYPES, MEMORY
from gateway.domain import ENGINES_DIR, Domain
from gateway.engine import Engine, EngineLimits
from gateway.errors import ConfigError, did_you_mean
from gateway.snapshots import ContributionBound
from gateway.state import AttributeValue, StateStore
from policy.access import dp_units
from policy.loader import parse_policy
from policy.model import Policy

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _read_policy(policy: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, Policy]:
    """The policy's YAML text and its validated model, from a path, YAML text or a dict."""
    if isinstance(policy, Mapping):
        text = yaml.safe_dump(dict(policy), sort_keys=False)
        return text, parse_policy(text, filename="<policy dict>", base_dir=Path.cwd())
    if isinstance(policy, os.PathLike) or (isinstance(policy, str) and "\n" not in policy):
        path = Path(policy)
        if not path.is_file():
            raise ConfigError(f"Policy file '{policy}' does not exist (give a path, "
                              "YAML text or a dict)")
        text = path.read_text(encoding="utf-8")
        return text, parse_policy(text, filename=str(path), base_dir=path.resolve().parent)
    if isinstance(policy, str):
        return policy, parse_policy(policy, filename="<policy text>", base_dir=Path.cwd())
    raise ConfigError(f"policy must be a path, YAML text or a dict, not {type(policy).__name__}")


def _match_frames(policy: Policy, tables: Mapping[str, object]) -> dict[tuple[str, str], object]:
    """Pair every memory table of the policy with its frame; refuse any mismatch."""
    declared = {f"{ds}.{t}": (ds, t, table.source.format)
                for ds, dataset in policy.datasets.items()
                for t, table in dataset.tables.items()}
    out: dict[tuple[str, str], object] = {}
    for name, frame in tables.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ConfigError(
                f"tables: '{name}' is not a table of the policy.{did_you_mean(name, declared)} "
                f"Name a table as 'dataset.table' and declare it with source: "
                f"{{format: memory}}. Tables of the policy: {known}")
        ds, t, fmt = declared[name]
        if fmt != "memory":
            raise ConfigError(
                f"tables: '{name}' is read from a '{fmt}' source in the policy; to serve "
                "a frame for it, declare it with source: {format: memory}")
        out[(ds, t)] = frame
    missing = sorted(name for name, (ds, t, fmt) in declared.items()
                     if fmt == "memory" and (ds, t) not in out)
    if missing:
        raise ConfigError(
            f"The policy declares {', '.join(repr(m) for m in missing)} with source: "
            f"{{format: memory}} but tables= gives no frame for it; pass "
            f"tables={{{missing[0]!r}: frame}} with {FRAME_TYPES}")
    return out


def _build_engine(policy: Policy, frames: Mapping[tuple[str, str], object], work_dir: Path,
                  limits: EngineLimits | None) -> Engine:
    """As :func:`gateway.domain.build_engine`, with the frames for the memory tables."""
    engine = Engine(work_dir, limits=limits)
    units = dp_units(policy)
    for number, (ds_name, dataset) in enumerate(sorted(policy.datasets.items())):
        for t_number, (t_name, table) in enumerate(sorted(dataset.tables.items())):
            if table.source.format == "memory":
                plan = MEMORY.plan_frame(frames[(ds_name, t_name)], f"{ds_name}.{t_name}")
            else:
                options = {k: v for k, v in asdict(table.source).items() if v is not None}
                alias = f"src_{number}_{t_number}_{_UNSAFE.sub('_', t_name)}"
                plan = connectors.get(table.source.format).plan(
                    options, base_dir=Path.cwd(), alias=alias)
            unit = units.get((ds_name, t_name))
            engine.add_table(ds_name, t_name, plan,
                             bound=ContributionBound(*unit) if unit else None)
    engine.start()
    return engine


def _add_user(domain: Domain, name: str, role: str, password: str,
              attributes: Mapping[str, AttributeValue] | None) -> None:
    roles = domain.policy.roles
    if role not in roles:
        raise ConfigError(f"Unknown role '{role}'.{did_you_mean(role, roles)} "
                          f"Roles of the policy: {', '.join(sorted(roles)) or 'none'}")
    domain.store.add_user(name, role, password, attributes)


def _ensure_user(domain: Domain, name: str, role: str, password: str,
                 attributes: Mapping[str, AttributeValue] | None) -> None:
    """``users=``: create the login, or bring one kept in ``data_dir`` up to date."""
    try:
        domain.store.get_user(name)
    except LookupError:
        _add_user(domain, name, role, password, attributes)
        return
    if role not in domain.policy.roles:
        _add_user(domain, name, role, password, attributes)  # the same message: unknown role
    domain.store.set_role(name, role)
    domain.store.set_password(name, password)
    domain.store.set_attributes(name, attributes or {})


class Embedded:
    """A running embedded gateway; close it (or use ``with``) to stop it."""

    def __init__(self, domain: Domain, server: Any, url: str, owned_dir: Path | None) -> None:
        self.domain = domain
        self.url = url
        self._server = server
        self._owned_dir = owned_dir
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.port)

    def add_user(self, name: str, role: str, password: str,
                 attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Create a login; ``role`` must be a role of the policy."""
        _add_user(self.domain, name, role, password, attributes)

    def connect(self, user: str, password: str):  # type: ignore[no-untyped-def]
        """An ADBC Flight SQL connection (autocommit) as ``user``."""
        import adbc_driver_flightsql.dbapi as flight_sql

        return flight_sql.connect(self.url, db_kwargs={"username": user, "password": password},
                                  autocommit=True)

    def close(self) -> None:
        """Stop the server, close the domain, and delete the state unless ``data_dir`` was given."""
        if self._closed:
            return
        self._closed = True
        try:
            self._server.shutdown()
        finally:
            self.domain.close()
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)

    def __enter__(self) -> Embedded:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.url
        return f"<stockade embedded gateway {self.domain.name!r} {state}>"


def serve(
    policy: str | os.PathLike[str] | Mapping[str, Any],
    tables: Mapping[str, object] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    users: Mapping[str, Mapping[str, Any]] | None = None,
    limits: EngineLimits | None = None,
) -> Embedded:
    """Start a gateway in this process over ``policy`` and the frames in ``tables``.

    ``policy`` is a policy file's path, its YAML text or the same as a dict.
    ``tables`` maps ``"dataset.table"`` to a polars or pandas DataFrame, a
    pyarrow Table or a RecordBatchReader; every such table is declared in the
    policy with ``source: {format: memory}``, and every memory table needs a
    frame. The frames are copied when the gateway starts. ``users`` maps a login
    name to ``{"role": ..., "password": ..., "attributes": {...}}``. State (users,
    budgets, audit) lives in ``data_dir``, or in a temporary directory deleted on
    :meth:`Embedded.close`. The policy cannot be replaced while running; start a
    new gateway instead.
    """
    from gateway import policy_versions
    from gateway.server import DomainServer

    text, parsed = _read_policy(policy)
    frames = _match_frames(parsed, tables or {})
    # Not started from a file: refuse live replacement (which rebuilds the engine
    # without the frames) rather than rewrite the caller's policy file.
    parsed = dataclasses.replace(parsed, file=None)
    owned = Path(tempfile.mkdtemp(prefix="stockade-")) if data_dir is None else None
    state_dir = owned if owned is not None else Path(data_dir)  # type: ignore[arg-type]
    opened: list[Any] = []
    try:
        shutil.rmtree(state_dir / ENGINES_DIR, ignore_errors=True)
        engine = _build_engine(parsed, frames, state_dir / "engine", limits)
        opened.append(engine)
        store = StateStore(state_dir)
        opened.append(store)
        domain = Domain(parsed, engine, store, text=text)
        opened[:] = [domain]
        domain.claim_name()
        domain.ledger.apply_policy_caps(parsed)
        domain.state.version = policy_versions.record_if_new(store, text, by="file")
        for name, spec in (users or {}).items():
            if not isinstance(spec, Mapping) or not {"role", "password"} <= set(spec):
                raise ConfigError(f"users: '{name}' needs {{'role': ..., 'password': ...}}")
            _ensure_user(domain, name, spec["role"], spec["password"], spec.get("attributes"))
        server = DomainServer(domain, f"grpc://{host}:{port}")
    except BaseException:
        for thing in reversed(opened):
            thing.close()
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    return Embedded(domain, server, f"grpc://{host}:{server.port}", owned)
