"""The noise of a merged answer: how the domains' dp noise combines per output column.

Each dp domain reports, per noisy column, the scale and 95 % half-width of every noise
draw behind it (``stockade.dp.scale`` and ``stockade.dp.ci95_half_width``, comma-separated
for derived columns such as AVG). Merging adds the domains' answers, so per group:

* a **sum of independent noises** (COUNT, SUM): the variances add, so the standard
  deviation is ``sqrt(Σ σ_i²)`` (Laplace noise of scale *b* has σ = √2·b) and the 95 %
  half-width is ``sqrt(Σ w_i²)``, from the domains' half-widths *w_i* — exact for one
  domain and for Gaussian noise, and slightly wide for sums of Laplace noise: such a sum is
  closer to normal than one draw, so its 95 % point lies between 1.96 σ (normal) and the
  2.12 σ of one Laplace draw that ``sqrt(Σ w_i²)`` assumes;
* a **function of such sums** (AVG = S/N, VAR and STDDEV from N, S and the sum of squares
  Q, arithmetic over aggregates): the delta method, i.e. the first-order Taylor expansion
  ``σ_f² = Σ_k (∂f/∂T_k)² σ_k²`` over the merged totals T_k (and the same for half-widths),
  evaluated per group at the noisy values;
* MIN and MAX are never noisy here (a dp domain refuses them) and count as exact.

>>> laplace = Component("laplace", 2.0, 2.0 * LN20)
>>> round(combine([laplace, laplace]).std, 6), round(combine([laplace, laplace]).width, 6)
(4.0, 8.47321)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from network.federate_split import DOMAINS, Aggregate, Split

META = "stockade.dp."
FEDERATED_META = "stockade.federated."
LN20 = math.log(20.0)
Z975 = 1.959963984540054
# Which noise each aggregate kind is a function of: n (count), s (sum), q (sum of squares).
_TOTALS = {"count": ("n",), "sum": ("s",), "min": (), "max": (), "avg": ("s", "n"),
           "var_samp": ("n", "s", "q"), "var_pop": ("n", "s", "q"),
           "stddev_samp": ("n", "s", "q"), "stddev_pop": ("n", "s", "q")}
Key = tuple[str, str]  # (total, normalised argument), e.g. ("s", '"age"')


@dataclass(frozen=True)
class Component:
    """One noise draw: its mechanism, scale (Laplace *b* or Gaussian σ) and 95 % half-width."""

    mechanism: str
    scale: float
    width: float

    @property
    def variance(self) -> float:
        if self.mechanism == "laplace":
            return 2.0 * self.scale**2
        if self.mechanism == "gaussian":
            return self.scale**2
        return (self.width / Z975) ** 2


@dataclass(frozen=True)
class Combined:
    std: float
    width: float


def combine(components: Sequence[Component]) -> Combined:
    """The noise of a sum of independent draws (see the module)."""
    return Combined(math.sqrt(sum(c.variance for c in components)),
                    math.sqrt(sum(c.width**2 for c in components)))


def components(metadata: Mapping[bytes, bytes] | None) -> list[Component]:
    """The noise draws a domain reports for one column (empty when it is exact).

    The mechanism of each draw is read from its half-width: ``ln(20)·b`` for Laplace,
    ``1.96·σ`` for Gaussian.

    >>> components({b"stockade.dp.mechanism": b"laplace", b"stockade.dp.scale": b"2.0,1.0",
    ...             b"stockade.dp.ci95_half_width": b"5.99146,2.99573"})  # doctest: +ELLIPSIS
    [Component(mechanism='laplace', scale=2.0, ...), Component(mechanism='laplace', scale=1.0, ...)]
    """
    meta = metadata or {}
    scales, widths = meta.get(b"stockade.dp.scale"), meta.get(b"stockade.dp.ci95_half_width")
    if not scales or not widths:
        return []
    try:
        pairs = list(zip([float(v) for v in scales.split(b",")],
                         [float(v) for v in widths.split(b",")], strict=True))
    except ValueError:
        return []
    declared = meta.get(b"stockade.dp.mechanism", b"").decode().split(",")
    found = []
    for scale, width in pairs:
        mechanism = declared[0] if len(declared) == 1 else "unknown"
        if scale > 0 and math.isclose(width / scale, LN20, rel_tol=1e-6):
            mechanism = "laplace"
        elif scale > 0 and math.isclose(width / scale, Z975, rel_tol=1e-6):
            mechanism = "gaussian"
        found.append(Component(mechanism, scale, width))
    return found


# Per domain: the noise of each total, or None when the domain's answer is noisy in a way
# that cannot be taken apart (then no interval is given for columns that depend on it).
DomainNoise = dict[Key, Component | None]


def domain_noise(split: Split, table: pa.Table) -> DomainNoise:
    """What noise one domain's answer carries, per total (n, s, q) and argument."""
    draws = {p.alias: components(table.schema.field(p.alias).metadata) for p in split.parts
             if p.alias in table.column_names}
    noise: DomainNoise = {}
    for part in split.parts:  # the simple parts first: they name the draws of the others
        total = {"count": "n", "sum": "s"}.get(part.kind)
        if total and draws.get(part.alias):
            only = draws[part.alias]
            noise[total, part.arg] = only[0] if len(only) == 1 else None
    for kind, total, known in (("avg", "s", ("n",)), ("var_pop", "q", ("n", "s"))):
        for part in split.parts:
            if part.kind != kind or not draws.get(part.alias) or (total, part.arg) in noise:
                continue
            rest = _without(draws[part.alias], [noise.get((k, part.arg)) for k in known])
            noise[total, part.arg] = rest[0] if rest is not None and len(rest) == 1 else None
    return noise


def _without(draws: list[Component], known: list[Component | None]) -> list[Component] | None:
    """``draws`` less one draw matching each known one (by mechanism and scale)."""
    rest = list(draws)
    for draw in known:
        match = next((d for d in rest if draw is not None and d.mechanism == draw.mechanism
                      and math.isclose(d.scale, draw.scale, rel_tol=1e-9)), None)
        if match is None:
            return None
        rest.remove(match)
    return rest


# -- per row: the delta method with dual numbers ---------------------------------------


@dataclass(frozen=True)
class Dual:
    """A value and its gradient with respect to the merged totals."""

    value: float
    grad: dict[Key, float]

    def scaled(self, factor: float, value: float) -> Dual:
        return Dual(value, {k: g * factor for k, g in self.grad.items()})


def _plus(a: Dual, b: Dual, sign: float = 1.0) -> Dual:
    grad = dict(a.grad)
    for k, g in b.grad.items():
        grad[k] = grad.get(k, 0.0) + sign * g
    return Dual(a.value + sign * b.value, grad)


def _times(a: Dual, b: Dual) -> Dual:
    return _plus(a.scaled(b.value, 0.0), b.scaled(a.value, 0.0)).scaled(1.0, a.value * b.value)


def _leaf(aggregate: Aggregate, stats: Callable[[int], float | None]) -> Dual | None:
    """An aggregate's merged value and gradient, from its parts' statistics."""
    values = [stats(i) for i in range(len(aggregate.parts))]
    if any(v is None for v in values):
        return None
    v = [float(x) for x in values if x is not None]
    a, kind = aggregate.arg, aggregate.kind
    if kind in ("count", "sum"):
        return Dual(v[0], {("n" if kind == "count" else "s", a): 1.0})
    if kind in ("min", "max"):
        return Dual(v[0], {})
    if kind == "avg":
        s, n = v
        return Dual(s / n, {("s", a): 1.0 / n, ("n", a): -s / n**2}) if n else None
    n, mean, m2 = v
    s, q = n * mean, m2 + n * mean**2
    if kind.endswith("_pop"):
        if n <= 0:
            return None
        var = Dual(m2 / n, {("q", a): 1 / n, ("s", a): -2 * s / n**2,
                            ("n", a): -q / n**2 + 2 * s**2 / n**3})
    else:
        if n <= 1:
            return None
        var = Dual(m2 / (n - 1), {("q", a): 1 / (n - 1), ("s", a): -2 * s / (n * (n - 1)),
                                  ("n", a): (s**2 / n**2 * (n - 1) - m2) / (n - 1) ** 2})
    if kind.startswith("stddev"):
        return var.scaled(0.5 / math.sqrt(var.value), math.sqrt(var.value)) \
            if var.value > 0 else None
    return var


def evaluate(node: exp.Expr, leaf: Callable[[str], Dual | None]) -> Dual | None:
    """The value and gradient of an output expression; None where the method stops.

    Handled: aggregates, numbers, + - * /, unary minus, parentheses, and ROUND and numeric
    CASTs (read as the identity: rounding moves a value by less than its last digit).
    """
    numeric_cast = isinstance(node, exp.Cast | exp.TryCast) and node.to.is_type(
        *exp.DataType.NUMERIC_TYPES)
    if isinstance(node, exp.Paren | exp.Round) or numeric_cast:
        return evaluate(node.this, leaf)
    if isinstance(node, exp.Column) and node.name.startswith("__a"):
        return leaf(node.name)
    if isinstance(node, exp.Literal) and not node.is_string:
        return Dual(float(node.name), {})
    if isinstance(node, exp.Neg):
        inner = evaluate(node.this, leaf)
        return inner.scaled(-1.0, -inner.value) if inner is not None else None
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        left, right = evaluate(node.this, leaf), evaluate(node.expression, leaf)
        if left is None or right is None:
            return None
        if isinstance(node, exp.Add | exp.Sub):
            return _plus(left, right, 1.0 if isinstance(node, exp.Add) else -1.0)
        if isinstance(node, exp.Mul):
            return _times(left, right)
        if right.value == 0:
            return None
        inverse = right.scaled(-1.0 / right.value**2, 1.0 / right.value)
        return _times(left, inverse)
    return None


# -- the metadata of a merged answer -------------------------------------------------


def annotate(split: Split, parts: Sequence[tuple[str, pa.Table]],
             answer: pa.Table) -> tuple[dict[int, dict[str, str]], dict[str, str]]:
    """Per output column (by position) its dp metadata, and the answer's schema metadata."""
    noise = [domain_noise(split, table) for _, table in parts]
    schema = _spending(parts)
    if not any(noise):
        return {}, schema
    by_alias = {a.alias: a for a in split.aggregates}
    stats = {p.alias: answer.column(f"__s{i}").to_pylist() for i, p in enumerate(split.parts)}
    domains = answer.column(DOMAINS).to_pylist()
    fields: dict[int, dict[str, str]] = {}
    for index, output in enumerate(split.outputs):
        used = [by_alias[c.name] for c in output.expr.find_all(exp.Column)
                if c.name in by_alias]
        keys = {(t, a.arg) for a in used for t in _TOTALS[a.kind]}
        noisy = [n for n in noise if keys & n.keys()]
        if not noisy:
            continue
        stds: list[float | None] = []
        widths: list[float | None] = []
        for row, present in enumerate(domains):
            def leaf(alias: str, row: int = row) -> Dual | None:
                aggregate = by_alias[alias]
                return _leaf(aggregate, lambda i: _number(
                    stats[aggregate.parts[i].alias][row]))
            dual = evaluate(output.expr, leaf)
            row_noise = [noise[d] for d in sorted(present or [])]
            combined = _row(dual, row_noise) if dual is not None else None
            stds.append(combined.std if combined else None)
            widths.append(combined.width if combined else None)
        fields[index] = _field_metadata(output.expr, by_alias, noisy, keys, stds, widths)
    return fields, schema


def _number(value: object) -> float | None:
    """A statistic as a float; None when missing or not a number (MIN of a string)."""
    try:
        return None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _row(dual: Dual, row_noise: list[DomainNoise]) -> Combined | None:
    variance = width2 = 0.0
    for key, gradient in dual.grad.items():
        for noise in row_noise:
            if key not in noise:
                continue
            draw = noise[key]
            if draw is None:
                return None
            variance += gradient**2 * draw.variance
            width2 += gradient**2 * draw.width**2
    return Combined(math.sqrt(variance), math.sqrt(width2))


def _field_metadata(expr: exp.Expr, by_alias: dict[str, Aggregate], noisy: list[DomainNoise],
                    keys: set[Key], stds: list[float | None],
                    widths: list[float | None]) -> dict[str, str]:
    mechanisms = sorted({d.mechanism for n in noisy for k, d in n.items()
                         if k in keys and d is not None} or {"unknown"})
    bare = expr.name if isinstance(expr, exp.Column) else ""
    simple = bare in by_alias and by_alias[bare].kind in ("count", "sum")
    meta = {
        META + "mechanism": ",".join(mechanisms),
        META + "derived": "false" if simple else "true",
        META + "scale_by_row": json.dumps(stds),
        META + "ci95_half_width_by_row": json.dumps(widths),
    }
    known_stds = [s for s in stds if s is not None]
    known_widths = [w for w in widths if w is not None]
    if known_stds and known_widths:
        meta[META + "scale"] = repr(max(known_stds))
        meta[META + "ci95_half_width"] = repr(max(known_widths))
    return meta


def _spending(parts: Sequence[tuple[str, pa.Table]]) -> dict[str, str]:
    """``stockade.federated.epsilon_spent`` and friends: {domain: value} per dp domain."""
    schema: dict[str, str] = {}
    for key in ("epsilon_spent", "delta_spent", "epsilon_remaining", "delta_remaining"):
        values = {}
        for name, table in parts:
            raw = (table.schema.metadata or {}).get((META + key).encode())
            if raw is not None:
                values[name] = float(raw)
        if values:
            schema[FEDERATED_META + key] = json.dumps(values)
    return schema
