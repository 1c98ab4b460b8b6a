"""SmartNoise's noise mechanisms with the noise-scale search memoised.

SmartNoise builds a fresh mechanism for every noisy column of every query, and
each one runs OpenDP's binary search for the smallest noise scale that meets its
privacy parameters (tens of milliseconds per mechanism). That scale is a pure
function of the mechanism class and of the numbers the search reads:

- Laplace: ε, the bounds (``lower``, ``upper``) and the contributions per
  privacy unit (``max_contrib``);
- Gaussian: the same, plus δ and the integer bit depth.

:func:`mechanisms` returns SmartNoise's mechanism table with classes whose
search is looked up in a process-wide cache keyed on exactly those values, so a
cached scale is the scale the search would have found. Noise is still drawn by
OpenDP's samplers: :meth:`CachedLaplace.release` draws a whole column at once
through OpenDP's Laplace measurement over a vector of floats (the same sampler,
scale and granularity for each element as its measurement on one float).

>>> m = CachedLaplace(1.0, sensitivity=1, max_contrib=2)
>>> round(m.scale, 6)
2.0
>>> round(ci95_half_width("laplace", 2.0), 4)  # 2 * ln(20)
5.9915
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import opendp.prelude as dp
from opendp.mod import enable_features
from snsql.sql._mechanisms.base import Mechanism
from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace
from snsql.sql.privacy import Mechanisms

# SmartNoise's mechanisms need OpenDP's floating-point samplers.
enable_features("floating-point", "contrib")

_CACHE_SIZE = 4096
_cache: OrderedDict[tuple[Any, ...], float] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def _exact(value: Any) -> float | None:
    return None if value is None else float(value)


def _cached_scale(key: tuple[Any, ...], search: Any) -> float:
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return found
    scale = float(search())
    with _lock:
        _stats["misses"] += 1
        _cache[key] = scale
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return scale


def cache_info() -> dict[str, int]:
    """Hits, misses and size of the scale cache (for tests and benchmarks)."""
    with _lock:
        return {**_stats, "size": len(_cache)}


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)


_measurements: dict[float, Any] = {}


def _laplace_measurement(scale: float) -> Any:
    """OpenDP's Laplace measurement on vectors of floats at ``scale`` (built once per scale).

    Each element gets independent noise from the same sampler as OpenDP's
    measurement on one float (``make_laplace`` over an atom domain), at the same
    scale and granularity: one call draws a whole column.
    """
    found = _measurements.get(scale)
    if found is None:
        enable_features("floating-point", "contrib")
        found = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)),
                                  dp.l1_distance(T=float), scale)
        with _lock:
            if len(_measurements) > _CACHE_SIZE:
                _measurements.clear()
            _measurements[scale] = found
    return found


class CachedLaplace(Laplace):  # type: ignore[misc]
    """SmartNoise's Laplace mechanism; the scale search and the sampler are memoised."""

    def release(self, vals: Any) -> list[float]:
        """The values plus Laplace noise of this mechanism's scale, in one OpenDP call."""
        values = [float(v) for v in vals]
        if not values:
            return []
        return [float(v) for v in _laplace_measurement(float(self.scale))(values)]

    def _compute_noise_scale(self) -> None:
        if self.scale is not None:  # type: ignore[has-type]
            return
        key = ("laplace", _exact(self.epsilon), _exact(self.lower), _exact(self.upper),
               int(self.max_contrib))

        def search() -> float:
            Laplace._compute_noise_scale(self)
            return float(self.scale)  # type: ignore[has-type]

        self.scale = _cached_scale(key, search)


class CachedGaussian(Gaussian):  # type: ignore[misc]
    """SmartNoise's Gaussian mechanism; the scale search is memoised."""

    def _compute_noise_scale(self) -> None:
        if self.scale is not None:  # type: ignore[has-type]
            return
        key = ("gaussian", _exact(self.epsilon), _exact(self.delta), _exact(self.lower),
               _exact(self.upper), int(self.max_contrib), int(self.bit_depth))

        def search() -> float:
            Gaussian._compute_noise_scale(self)
            return float(self.scale)  # type: ignore[has-type]

        self.scale = _cached_scale(key, search)


def mechanisms() -> Mechanisms:
    """SmartNoise's default mechanism table, with the memoised classes."""
    table = Mechanisms()
    table.classes = {
        Mechanism.laplace: CachedLaplace,
        Mechanism.geometric: CachedLaplace,
        Mechanism.discrete_laplace: CachedLaplace,
        Mechanism.gaussian: CachedGaussian,
    }
    return table


#: Two-sided standard normal quantile for 95 %.
_Z975 = 1.959963984540054


def ci95_half_width(mechanism: str, scale: float) -> float:
    """Half-width of the 95 % interval of the noise added by ``mechanism``.

    Laplace noise of scale *b* has P(|X| > t) = exp(-t / b), so the 95 %
    half-width is ``b * ln(20)``; Gaussian noise of standard deviation σ has
    ``1.95996 * σ``.
    """
    if mechanism == "laplace":
        return scale * math.log(20.0)
    if mechanism == "gaussian":
        return scale * _Z975
    raise ValueError(f"unknown mechanism {mechanism!r}")


def mechanism_name(mech: Any) -> str:
    """``laplace`` or ``gaussian`` for a SmartNoise mechanism instance."""
    return "gaussian" if isinstance(mech, Gaussian) else "laplace"
