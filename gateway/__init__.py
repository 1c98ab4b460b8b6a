"""The domain gateway. ``gateway.serve`` embeds one in a Python program (see :mod:`gateway.embed`);
``stockade serve`` runs one from a policy file (see :mod:`gateway.serving`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.embed import Embedded
    from gateway.engine import EngineLimits


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
    """Start a gateway in this process; see :func:`gateway.embed.serve`."""
    from gateway.embed import serve as _serve

    return _serve(policy, tables, data_dir=data_dir, host=host, port=port, users=users,
                  limits=limits)


__all__ = ["serve"]
