"""What several console pages share: the page header, number formats, form parsing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import streamlit as st
import yaml

from gateway.errors import InputError, StockadeError
from ui.session import act, show_flash


def header(title: str, caption: str | None = None) -> None:
    """The page's title, then any message left by the change that led here."""
    st.title(title)
    if caption:
        st.caption(caption)
    show_flash()


def eps(value: float | None, digits: int = 3) -> str:
    """An ε or δ for people: ``None`` is "—", small values in scientific notation."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def frame(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A table of ``rows`` with exactly ``columns`` (nested values as compact JSON)."""
    data = []
    for row in rows:
        data.append({c: _cell(row.get(c)) for c in columns})
    return pd.DataFrame(data, columns=columns)


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    return value


def parse_attributes(text: str) -> dict[str, Any]:
    """The attributes typed into a form, as a JSON object (empty means ``{}``)."""
    text = (text or "").strip() or "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"Attributes are not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            'write a JSON object such as {"site": "north"}.'
        ) from None
    if not isinstance(value, dict):
        raise InputError('Attributes must be a JSON object such as {"site": "north"}, '
                         f"not {type(value).__name__ if value is not None else 'null'}.")
    return value


def policy_roles() -> list[str]:
    """The roles of the live policy (from ``stockade.policy.get``)."""
    try:
        parsed = yaml.safe_load(act("stockade.policy.get")["yaml"])
    except (StockadeError, yaml.YAMLError, KeyError, TypeError):
        parsed = None
    roles = parsed.get("roles") if isinstance(parsed, dict) else None
    if isinstance(roles, dict) and roles:
        return sorted(str(name) for name in roles)
    # Without the policy, offer at least the roles users have.
    return sorted({str(u["role"]) for u in act("stockade.users.list")})


def dataset_names(status: Mapping[str, Any] | None = None) -> list[str]:
    """The datasets of the domain (from ``stockade.status``)."""
    status = status if status is not None else act("stockade.status")
    return [str(d["dataset"]) for d in status.get("datasets", [])]
