"""Who is asking: the authenticated user, their role and their attributes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``attributes`` are the owner-given facts about the user (``site``,
    ``department``, ...) that row filters may use as ``{user.ATTR}``.

    >>> p = Principal("alice", "clinician", {"site": "north"})
    >>> p.attributes["site"]
    'north'
    """

    user: str
    role: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
