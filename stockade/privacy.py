"""The privacy metadata of an answer, read from its Arrow schema.

A ``dp`` answer from a domain carries ``stockade.dp.*`` keys: what it cost
(``epsilon_spent``, ``delta_spent``), what is left (``epsilon_remaining``,
``delta_remaining``), whether it came from the answer cache, and per noisy
column its mechanism, noise scale and 95 % half-width. A federated answer from
a network carries ``stockade.federated.*`` keys: each domain's status and, per
``dp`` domain, what it charged and what is left there (see docs/network.md).
:func:`privacy_of` reads either into a :class:`Privacy`.

>>> import pyarrow as pa
>>> field = pa.field("n", pa.int64(), metadata={"stockade.dp.mechanism": "laplace",
...     "stockade.dp.scale": "10.0", "stockade.dp.ci95_half_width": "29.957",
...     "stockade.dp.derived": "false"})
>>> schema = pa.schema([field], metadata={"stockade.dp.epsilon_spent": "0.1",
...     "stockade.dp.delta_spent": "0.0", "stockade.dp.epsilon_remaining": "2.9",
...     "stockade.dp.delta_remaining": "1e-06", "stockade.dp.cached": "false"})
>>> p = privacy_of(schema)
>>> p.epsilon_spent, p.epsilon_remaining, p.columns["n"].ci95_half_width
(0.1, 2.9, 29.957)
>>> privacy_of(pa.schema([("n", pa.int64())])) is None
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

DP = "stockade.dp."
FEDERATED = "stockade.federated."


@dataclass(frozen=True)
class ColumnNoise:
    """The noise on one output column.

    ``scale`` and ``ci95_half_width`` describe the column's noise as one number:
    for a plain ``COUNT`` or ``SUM`` from a domain, the Laplace scale *b* (or the
    Gaussian σ) and the 95 % half-width of its one draw; for a federated column,
    the standard deviation and half-width of the combined noise (the largest over
    the rows; ``ci95_half_width_by_row`` has each row's). They are ``None`` for a
    domain's derived column (``AVG``, ``VARIANCE``, ``STDDEV``, arithmetic), whose
    noise comes from several draws: ``scales`` and ``ci95_half_widths`` list them
    (the noisy sums and counts it is computed from), and ``ci95_half_width_by_row``
    gives each row's own 95 % half-width. ``ci95_coverage`` is the exact probability
    that a single draw's interval covers the truth (above 0.95 for whole numbers at
    small noise); ``null_when`` says why a value may be NULL (a noisy denominator
    that is not positive).
    """

    mechanism: str
    scale: float | None
    ci95_half_width: float | None
    derived: bool = False
    scales: tuple[float, ...] = ()
    ci95_half_widths: tuple[float, ...] = ()
    ci95_half_width_by_row: tuple[float | None, ...] | None = None
    ci95_coverage: float | None = None
    null_when: str | None = None


@dataclass(frozen=True)
class DomainSpend:
    """What one domain of a federated answer charged, and what is left there."""

    epsilon_spent: float
    delta_spent: float
    epsilon_remaining: float | None
    delta_remaining: float | None


@dataclass(frozen=True)
class Privacy:
    """The privacy cost and accuracy of one answer.

    For a federated answer, each domain charges its own budget: ``domains`` has
    each ``dp`` domain's spend and balance, ``epsilon_spent``/``delta_spent`` are
    their sums, ``epsilon_remaining``/``delta_remaining`` the least left at any
    of them (what bounds the next federated query), and ``federated`` maps every
    domain of the network to its status (``ok``, ``absent: …``, …).
    """

    epsilon_spent: float
    delta_spent: float
    epsilon_remaining: float | None
    delta_remaining: float | None
    columns: dict[str, ColumnNoise] = field(default_factory=dict)
    federated: dict[str, str] | None = None
    cached: bool = False
    domains: dict[str, DomainSpend] | None = None


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _floats(value: bytes | None) -> tuple[float, ...]:
    if not value:
        return ()
    return tuple(float(v) for v in value.decode().split(",") if v.strip())


def column_noise(metadata: Mapping[bytes, bytes] | None) -> ColumnNoise | None:
    """The noise a field's metadata describes; None for an exact column."""
    meta = metadata or {}
    mechanism = meta.get((DP + "mechanism").encode())
    if mechanism is None:
        return None
    derived = meta.get((DP + "derived").encode()) == b"true"
    by_row = meta.get((DP + "ci95_half_width_by_row").encode())
    scales = _floats(meta.get((DP + "scale").encode()))
    widths = _floats(meta.get((DP + "ci95_half_width").encode()))
    one = len(scales) == 1 and len(widths) == 1
    null_when = meta.get((DP + "null_when").encode())
    return ColumnNoise(
        mechanism=",".join(dict.fromkeys(mechanism.decode().split(","))),
        scale=scales[0] if one else None,
        ci95_half_width=widths[0] if one else None,
        derived=derived,
        scales=scales,
        ci95_half_widths=widths,
        ci95_half_width_by_row=None if by_row is None else tuple(json.loads(by_row)),
        ci95_coverage=_float(meta.get((DP + "ci95_coverage").encode())),
        null_when=None if null_when is None else null_when.decode(),
    )


def _json(meta: Mapping[bytes, bytes], key: str) -> Any:
    raw = meta.get((FEDERATED + key).encode())
    return None if raw is None else json.loads(raw)


def _federated(meta: Mapping[bytes, bytes], columns: dict[str, ColumnNoise]) -> Privacy:
    spend = {key: _json(meta, key) or {} for key in
             ("epsilon_spent", "delta_spent", "epsilon_remaining", "delta_remaining")}
    domains = {
        name: DomainSpend(float(spent), float(spend["delta_spent"].get(name, 0.0)),
                          spend["epsilon_remaining"].get(name),
                          spend["delta_remaining"].get(name))
        for name, spent in spend["epsilon_spent"].items()
    }
    status = _json(meta, "status")
    if status is None:
        status = {name: "ok" for name in _json(meta, "domains") or ()}
    remaining = [d.epsilon_remaining for d in domains.values() if d.epsilon_remaining is not None]
    deltas = [d.delta_remaining for d in domains.values() if d.delta_remaining is not None]
    return Privacy(
        epsilon_spent=sum(d.epsilon_spent for d in domains.values()),
        delta_spent=sum(d.delta_spent for d in domains.values()),
        epsilon_remaining=min(remaining) if remaining else None,
        delta_remaining=min(deltas) if deltas else None,
        columns=columns,
        federated=dict(status),
        cached=bool(domains) and all(d.epsilon_spent == 0 for d in domains.values()),
        domains=domains,
    )


def privacy_of(schema: pa.Schema) -> Privacy | None:
    """The :class:`Privacy` of an answer with this schema; None when it has none."""
    meta = schema.metadata or {}
    columns = {}
    for f in schema:
        noise = column_noise(f.metadata)
        if noise is not None:
            columns[f.name] = noise
    if any(k.startswith(FEDERATED.encode()) for k in meta):
        return _federated(meta, columns)
    spent = _float(meta.get((DP + "epsilon_spent").encode()))
    if spent is None:
        return None
    return Privacy(
        epsilon_spent=spent,
        delta_spent=_float(meta.get((DP + "delta_spent").encode())) or 0.0,
        epsilon_remaining=_float(meta.get((DP + "epsilon_remaining").encode())),
        delta_remaining=_float(meta.get((DP + "delta_remaining").encode())),
        columns=columns,
        cached=meta.get((DP + "cached").encode()) == b"true",
    )
