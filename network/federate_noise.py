"""The noise of a merged answer: how the domains' dp noise combines per output column.

A network node asks each domain for the parts of a federated query **unclamped** (the call
header ``x-stockade-dp-parts``): a dp domain then releases its noisy totals as drawn — counts
neither rounded nor made non-negative, variances not made non-negative — and the network
merges them and clamps once. Each dp domain reports, per noisy column, every noise draw
behind it, in order: ``stockade.dp.mechanism`` and ``stockade.dp.scale`` (comma lists),
e.g. AVG's draws of its sum and its count. Per group, the merged totals of each argument —
the count N, the sum S and the sum of squares Q — are sums of the domains' noisy totals,
and each draw moves them linearly (its *loads*):

* a count or sum draw moves its own total by one unit;
* a domain centres its sum of squares on the midpoint c of the column's bounds
  (``stockade.dp.centre``, which cuts its noise); the network recovers that domain's
  Q as ``n·(VAR_POP + AVG²) = Σ(x − c)² + 2c·Σx − c²·n`` (exact for the noisy values), so
  that domain's sum draw also moves Q by 2c, and its count draw by −c².

An output column is a function f of merged totals (``AVG = S/N``, ``VAR_POP = Q/N −
(S/N)²``, arithmetic over aggregates), linearised at the group's noisy values (the delta
method): its noise is ``Σ_d (∇f·a_d)·e_d`` over the draws e_d with loads a_d. Per group:

* ``scale`` is the standard deviation of that noise (a Laplace draw of scale *b* has
  σ = √2·b);
* the **95 % half-width** is the 95th percentile q of its absolute value, for the actual
  mix of Laplace and Gaussian draws: exact for one draw (``b·ln 20``, ``1.96 σ``) and for
  Gaussians only, else by conditional Monte Carlo (:func:`half_width`; within about 0.3 %
  of the exact point, the same for the same answer). Adding the draws' half-widths in
  quadrature, as the network did before, is up to 1.6 points wide: a sum of comparable
  Laplace draws is nearly normal, its 95 % point near 1.96 σ, not the 2.12 σ of one draw.
  A whole-number column (a COUNT, a SUM of integers) gets the smallest whole k with
  |error| ≤ k at 95 % (``k = ⌈q − ½⌉``);
* MIN and MAX are never noisy here (a dp domain refuses them) and count as exact.

A variance's own value is corrected for the bias that f's curvature gives noisy totals
(E[S²] = S² + Var S, …): the second-order term ``½ Σ_d σ_d²·a_dᵀ ∇²f a_d``, from the
per-domain sums :func:`curvature` gives the merge (:mod:`network.federate_merge`). The
intervals are read at the noisy values; where the merge clamps a variance at 0, the lower
side cannot miss, so such a group's interval covers more than 95 %, and a standard
deviation of 0 gets none (its derivative is infinite there).

>>> laplace = Component("laplace", 2.0, 2.0 * LN20)
>>> round(half_width([(laplace, 1.0)]), 6) == round(2.0 * LN20, 6)
True
>>> 4.0 * 1.96 < half_width([(laplace, 1.0), (laplace, 1.0)]) < 2.0 * LN20 * math.sqrt(2)
True
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
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
#: Simulated draws behind a half-width that has no closed form (see the module).
SAMPLES = 20_000


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


def components(metadata: Mapping[bytes, bytes] | None) -> list[Component]:
    """The noise draws a domain reports for one column (empty when it is exact).

    Each draw's mechanism is the entry of ``stockade.dp.mechanism`` at its position. An
    answer whose mechanism list does not match its scales (older domains) is read from
    each draw's half-width: ``ln(20)·b`` for Laplace, ``1.96·σ`` for Gaussian.

    >>> components({b"stockade.dp.scale": b"inf"})
    []
    >>> components({b"stockade.dp.mechanism": b"laplace,gaussian",
    ...             b"stockade.dp.scale": b"2.0,1.0"})  # doctest: +ELLIPSIS
    [Component(mechanism='laplace', scale=2.0, ...), Component(mechanism='gaussian', ...)]
    >>> [c.mechanism for c in components({b"stockade.dp.mechanism": b"laplace",
    ...     b"stockade.dp.scale": b"2.0,1.0",
    ...     b"stockade.dp.ci95_half_width": b"5.991465,1.959964"})]
    ['laplace', 'gaussian']
    """
    meta = metadata or {}
    raw_scales, raw_widths = meta.get(b"stockade.dp.scale"), meta.get(
        b"stockade.dp.ci95_half_width")
    if not raw_scales:
        return []
    try:
        scales = [float(v) for v in raw_scales.split(b",")]
        widths = [float(v) for v in raw_widths.split(b",")] if raw_widths else []
    except ValueError:
        return []
    if not all(math.isfinite(v) and v >= 0 for v in scales + widths):
        return []  # nothing sensible can be said (and nothing may break the merge)
    declared = [m.strip() for m in meta.get(b"stockade.dp.mechanism", b"").decode().split(",")]
    found = []
    for i, scale in enumerate(scales):
        width = widths[i] if len(widths) == len(scales) else math.nan
        if len(declared) == len(scales):
            mechanism = declared[i]
        elif scale > 0 and math.isclose(width / scale, LN20, rel_tol=1e-6):
            mechanism = "laplace"
        elif scale > 0 and math.isclose(width / scale, Z975, rel_tol=1e-6):
            mechanism = "gaussian"
        else:
            mechanism = declared[0] if len(declared) == 1 and declared[0] else "unknown"
        if mechanism == "laplace":
            width = scale * LN20
        elif mechanism == "gaussian":
            width = scale * Z975
        elif math.isnan(width):
            return []  # a draw of unknown kind and size: nothing can be said
        found.append(Component(mechanism, scale, width))
    return found


@dataclass(frozen=True)
class Draw:
    """One draw of a domain's noise and how far one unit of it moves each merged total."""

    component: Component
    loads: tuple[tuple[Key, float], ...]

    def load(self, key: Key) -> float:
        return next((v for k, v in self.loads if k == key), 0.0)


@dataclass
class DomainNoise:
    """The noise of one domain's answer: its draws, and the totals whose noise it reports
    in a way that cannot be taken apart (no interval for columns that depend on them)."""

    draws: list[Draw] = field(default_factory=list)
    unknown: set[Key] = field(default_factory=set)

    def keys(self) -> set[Key]:
        return {k for d in self.draws for k, v in d.loads if v} | self.unknown

    def __bool__(self) -> bool:
        return bool(self.draws or self.unknown)


def domain_noise(split: Split, table: pa.Table) -> DomainNoise:
    """What noise one domain's answer carries, per total (n, s, q) and argument."""
    fields = {p.alias: table.schema.field(p.alias) for p in split.parts
              if p.alias in table.column_names}
    draws = {alias: components(f.metadata) for alias, f in fields.items()}
    own: dict[Key, Component | None] = {}  # each total's own draw
    for part in split.parts:  # the simple parts first: they name the draws of the others
        total = {"count": "n", "sum": "s"}.get(part.kind)
        if total and draws.get(part.alias):
            only = draws[part.alias]
            own[total, part.arg] = only[0] if len(only) == 1 else None
    centres: dict[str, float] = {}
    for kind, total, known in (("avg", "s", ("n",)), ("var_pop", "q", ("n", "s"))):
        for part in split.parts:
            if part.kind != kind or not draws.get(part.alias) or (total, part.arg) in own:
                continue
            rest = _without(draws[part.alias], [own.get((k, part.arg)) for k in known])
            own[total, part.arg] = rest[0] if rest is not None and len(rest) == 1 else None
            if kind == "var_pop":
                centre = (fields[part.alias].metadata or {}).get(META.encode() + b"centre")
                try:
                    centres[part.arg] = float(centre) if centre else 0.0
                except ValueError:
                    centres[part.arg] = math.nan
                if not math.isfinite(centres[part.arg]):
                    own[total, part.arg] = None
                    centres[part.arg] = 0.0
    noise = DomainNoise()
    for (total, arg), component in own.items():
        if component is None:
            noise.unknown.add((total, arg))
            continue
        loads: list[tuple[Key, float]] = [((total, arg), 1.0)]
        centre = centres.get(arg, 0.0)
        if centre and ("q", arg) in own:  # Q = Σ(x − c)² + 2c·S − c²·N (see the module)
            if total == "s":
                loads.append((("q", arg), 2.0 * centre))
            elif total == "n":
                loads.append((("q", arg), -centre * centre))
        noise.draws.append(Draw(component, tuple(loads)))
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


def curvature(noise: DomainNoise, arg: str) -> tuple[float, float, float, float]:
    """One domain's ``(Σ σ²·aₙ², Σ σ²·aₙ·aₛ, Σ σ²·aₙ·a_q, Σ σ²·aₛ²)`` over its draws for
    ``arg``: with the Hessian of a variance, the second-order bias of its merged value
    (see the module; a total whose noise cannot be taken apart adds nothing).

    >>> lap = Component("laplace", 1.0, LN20)
    >>> noise = DomainNoise([Draw(lap, ((("n", "x"), 1.0), (("q", "x"), -4.0))),
    ...                      Draw(lap, ((("s", "x"), 1.0), (("q", "x"), 4.0)))])
    >>> curvature(noise, "x")
    (2.0, 0.0, -8.0, 2.0)
    """
    nn = ns = nq = ss = 0.0
    for draw in noise.draws:
        a_n, a_s, a_q = (draw.load((t, arg)) for t in ("n", "s", "q"))
        v = draw.component.variance
        nn, ns, nq, ss = nn + v * a_n * a_n, ns + v * a_n * a_s, nq + v * a_n * a_q, \
            ss + v * a_s * a_s
    return nn, ns, nq, ss


# -- the 95 % point of a linear combination of draws ------------------------------------


@functools.lru_cache(maxsize=64)
def _unit_draws(mechanism: str, count: int) -> np.ndarray:
    """``SAMPLES`` × ``count`` standard draws, the same on every call (common numbers).

    A Latin hypercube: each column takes every one of ``SAMPLES`` equal-probability strata
    once (their midpoints, through the inverse CDF), in its own fixed random order. For a
    sum of columns this is far more accurate than independent draws.
    """
    rng = np.random.default_rng([0x5eed, count, 0 if mechanism == "laplace" else 1])
    middles = (np.arange(SAMPLES) + 0.5) / SAMPLES
    if mechanism == "laplace":
        column = np.where(middles < 0.5, np.log(2 * middles), -np.log(2 * (1 - middles)))
    else:
        inverse = statistics.NormalDist().inv_cdf
        column = np.array([inverse(float(u)) for u in middles])
    draws = np.stack([column[rng.permutation(SAMPLES)] for _ in range(count)], axis=1)
    draws.setflags(write=False)
    return draws


@functools.lru_cache(maxsize=4096)
def _unit_quantile(laplace: tuple[float, ...], gaussian: float) -> float:
    """The 95th percentile of ``|Σ bᵢ·Lᵢ + g·Z|`` (standard Laplace Lᵢ, normal Z), for
    ``laplace`` sorted ascending.

    Conditional Monte Carlo: the largest Laplace term is integrated exactly, the others are
    simulated, so ``P(|X| ≤ t) = mean(F(t − Y) − F(−t − Y))`` is smooth in t (F the largest
    term's CDF, Y the sum of the others), and Newton's method finds its 0.95 point.
    """
    *rest, b = laplace
    others = np.zeros(SAMPLES)
    if rest:
        others = _unit_draws("laplace", len(rest)) @ np.asarray(rest)
    if gaussian:
        others = others + gaussian * _unit_draws("gaussian", 1)[:, 0]

    def below(x: np.ndarray) -> np.ndarray:
        tail = 0.5 * np.exp(-np.abs(x) / b)
        below: np.ndarray = np.where(x < 0, tail, 1.0 - tail)
        return below

    low, high = 0.0, LN20 * math.sqrt(math.fsum(v * v for v in laplace)) + Z975 * gaussian
    t = high  # adding 95 % half-widths in quadrature overstates the 95 % point
    for _ in range(60):
        up, down = t - others, -t - others
        gap = float(np.mean(below(up) - below(down))) - 0.95
        if abs(gap) < 1e-12:
            break
        if gap > 0:
            high = t
        elif t >= high:  # not bracketed yet
            low, high = t, 2 * t
        else:
            low = t
        slope = float(np.mean(np.exp(-np.abs(up) / b) + np.exp(-np.abs(down) / b))) / (2 * b)
        step = t - gap / slope if slope > 0 else math.nan
        t = step if low < step < high else (low + high) / 2
        if high - low < 1e-12 * high:
            break
    return t


def half_width(terms: Sequence[tuple[Component, float]]) -> float:
    """The 95th percentile of ``|Σ c·e|`` over independent draws e (see the module).

    Gaussian draws add into one Gaussian; a mix with two or more Laplace draws is read
    from simulated draws, once per shape (the scales relative to their norm, to three
    decimals: within 0.1 % of the exact shape's).
    """
    laplace = [abs(c) * d.scale for d, c in terms if c and d.mechanism == "laplace"]
    gaussian = math.sqrt(math.fsum(
        (c * (d.scale if d.mechanism == "gaussian" else d.width / Z975)) ** 2
        for d, c in terms if c and d.mechanism != "laplace"))
    if not laplace:
        return Z975 * gaussian
    if len(laplace) == 1 and not gaussian:
        return laplace[0] * LN20
    norm = math.sqrt(math.fsum(b * b for b in laplace) + gaussian * gaussian)
    shape = tuple(r for r in sorted(round(b / norm, 3) for b in laplace) if r)
    if not shape:
        return Z975 * gaussian
    return norm * _unit_quantile(shape, round(gaussian / norm, 3))


def whole(width: float) -> float:
    """The half-width of a whole-number column: the smallest whole k with k + ½ ≥ width.

    >>> whole(11.98), whole(12.4), whole(0.3)
    (12.0, 12.0, 0.0)
    """
    return float(max(0, math.ceil(width - 0.5)))


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


def _leaf(aggregate: Aggregate, stats: Callable[[int], float | None],
          merged: float | None) -> Dual | None:
    """An aggregate's merged value (``merged``, as the merge answered it) and its gradient,
    from its parts' statistics."""
    values = [stats(i) for i in range(len(aggregate.parts))]
    if merged is None or any(v is None for v in values):
        return None
    v = [float(x) for x in values if x is not None]
    a, kind = aggregate.arg, aggregate.kind
    if kind in ("count", "sum"):
        return Dual(merged, {("n" if kind == "count" else "s", a): 1.0})
    if kind in ("min", "max"):
        return Dual(merged, {})
    if kind == "avg":
        s, n = v
        return Dual(merged, {("s", a): 1.0 / n, ("n", a): -s / n**2}) if n else None
    n, mean, m2 = v
    s, q = n * mean, m2 + n * mean**2
    if kind.endswith("_pop"):
        if n <= 0:
            return None
        grad = {("q", a): 1 / n, ("s", a): -2 * s / n**2,
                ("n", a): -q / n**2 + 2 * s**2 / n**3}
    else:
        if n <= 1:
            return None
        grad = {("q", a): 1 / (n - 1), ("s", a): -2 * s / (n * (n - 1)),
                ("n", a): (s**2 / n**2 * (n - 1) - m2) / (n - 1) ** 2}
    if kind.startswith("stddev"):  # merged = √variance; none when the variance is 0
        return Dual(merged, {k: g * 0.5 / merged for k, g in grad.items()}) \
            if merged > 0 else None
    return Dual(merged, grad)


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


@dataclass(frozen=True)
class Combined:
    std: float
    width: float


def annotate(split: Split, parts: Sequence[tuple[str, pa.Table]],
             answer: pa.Table) -> tuple[dict[int, dict[str, str]], dict[str, str]]:
    """Per output column (by position) its dp metadata, and the answer's schema metadata."""
    noise = [domain_noise(split, table) for _, table in parts]
    schema = _spending(parts)
    if not any(noise):
        return {}, schema
    by_alias = {a.alias: a for a in split.aggregates}
    stats = {p.alias: answer.column(f"__s{i}").to_pylist() for i, p in enumerate(split.parts)}
    merged = {a.alias: answer.column(a.alias).to_pylist() for a in split.aggregates}
    domains = answer.column(DOMAINS).to_pylist()
    fields: dict[int, dict[str, str]] = {}
    for index, output in enumerate(split.outputs):
        used = [by_alias[c.name] for c in output.expr.find_all(exp.Column)
                if c.name in by_alias]
        keys = {(t, a.arg) for a in used for t in _TOTALS[a.kind]}
        noisy = [n for n in noise if keys & n.keys()]
        if not noisy:
            continue
        kind = answer.schema.field(index).type
        whole_number = pa.types.is_integer(kind) or (pa.types.is_decimal(kind)
                                                      and kind.scale == 0)
        stds: list[float | None] = []
        widths: list[float | None] = []
        for row, present in enumerate(domains):
            def leaf(alias: str, row: int = row) -> Dual | None:
                aggregate = by_alias[alias]
                return _leaf(aggregate, lambda i: _number(
                    stats[aggregate.parts[i].alias][row]), _number(merged[alias][row]))
            dual = evaluate(output.expr, leaf)
            row_noise = [noise[d] for d in sorted(present or [])]
            combined = _row(dual, row_noise, whole_number) if dual is not None else None
            stds.append(combined.std if combined else None)
            widths.append(combined.width if combined else None)
        fields[index] = _field_metadata(output.expr, by_alias, noisy, keys, stds, widths)
    return fields, schema


def _number(value: object) -> float | None:
    """A statistic as a float; None when missing or not a number (MIN of a string)."""
    try:
        number = None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _row(dual: Dual, row_noise: list[DomainNoise], whole_number: bool) -> Combined | None:
    """The noise of one value: each draw's coefficient ∇f·a_d, at the noisy point."""
    terms: list[tuple[Component, float]] = []
    moved = {k for k, g in dual.grad.items() if g}
    for noise in row_noise:
        if moved & noise.unknown:
            return None
        for draw in noise.draws:
            coefficient = math.fsum(g * draw.load(k) for k, g in dual.grad.items())
            if coefficient:
                terms.append((draw.component, coefficient))
    variance = math.fsum(c * c * d.variance for d, c in terms)
    width = half_width(terms) if terms else 0.0
    return Combined(math.sqrt(variance), whole(width) if whole_number else width)


def _field_metadata(expr: exp.Expr, by_alias: dict[str, Aggregate], noisy: list[DomainNoise],
                    keys: set[Key], stds: list[float | None],
                    widths: list[float | None]) -> dict[str, str]:
    mechanisms = sorted({d.component.mechanism for n in noisy for d in n.draws
                         if any(k in keys and v for k, v in d.loads)} or {"unknown"})
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
