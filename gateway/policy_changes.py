"""What changes between two versions of a policy, for the owner to read before applying.

:func:`text_diff` is the unified diff of the two YAML texts; :func:`changes`
lists, one line each, what the change means for access: datasets, tables and
roles added or removed, each role's mode per dataset (and per table where a
table overrides it), row filters, masks and hidden columns, budgets and caps,
limits.

>>> from policy.model import Domain, Policy, Role
>>> old = Policy(Domain("d"), {}, {"analyst": Role("analyst")})
>>> new = Policy(Domain("d"), {}, {"owner": Role("owner", admin=True)})
>>> changes(old, new)
["role 'analyst' removed", "role 'owner' added (admin)"]
>>> print(text_diff("a: 1\\n", "a: 2\\n", old_name="live", new_name="new"), end="")
--- live
+++ new
@@ -1 +1 @@
-a: 1
+a: 2
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

from policy.model import Budget, DatasetGrant, Limits, LimitsOverride, Policy, Role, Table

T = TypeVar("T")


def text_diff(old: str, new: str, *, old_name: str, new_name: str) -> str:
    """The unified diff of ``old`` and ``new`` (``""`` when they are the same)."""
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=old_name,
                                 tofile=new_name, lineterm="")
    text = "\n".join(lines)
    return text + "\n" if text else ""


def changes(old: Policy, new: Policy) -> list[str]:
    """One human-readable line per change that matters to access (see the module doc)."""
    out: list[str] = []
    if old.domain.name != new.domain.name:
        out.append(f"domain name '{old.domain.name}' → '{new.domain.name}'")
    out += _limits("limits", old.limits, new.limits)
    out += _names("secret", old.secrets, new.secrets)
    if old.functions.allow != new.functions.allow:
        out.append(f"allowed functions {_list(old.functions.allow)} → "
                   f"{_list(new.functions.allow)}")
    added, removed, kept = _split(old.datasets, new.datasets)
    out += [f"dataset '{name}' added" for name in added]
    out += [f"dataset '{name}' removed" for name in removed]
    for name in kept:
        before, after = old.datasets[name], new.datasets[name]
        if before.budget_cap != after.budget_cap:
            out.append(f"dataset '{name}': budget cap {_budget(before.budget_cap)} → "
                       f"{_budget(after.budget_cap)}")
        t_added, t_removed, t_kept = _split(before.tables, after.tables)
        out += [f"table '{name}.{t}' added" for t in t_added]
        out += [f"table '{name}.{t}' removed" for t in t_removed]
        for t in t_kept:
            out += _table(f"{name}.{t}", before.tables[t], after.tables[t])
    r_added, r_removed, r_kept = _split(old.roles, new.roles)
    out += [f"role '{name}' removed" for name in r_removed]
    for name in r_added:
        out.append(f"role '{name}' added ({_summary(new.roles[name], new)})")
    for name in r_kept:
        out += _role(name, old.roles[name], new.roles[name], old, new)
    return out


def _split(old: Mapping[str, T], new: Mapping[str, T]) -> tuple[list[str], list[str], list[str]]:
    """Names added, removed and kept, each sorted."""
    return (sorted(set(new) - set(old)), sorted(set(old) - set(new)),
            sorted(set(old) & set(new)))


def _names(kind: str, old: Iterable[str], new: Iterable[str]) -> list[str]:
    added, removed, _ = _split(dict.fromkeys(old), dict.fromkeys(new))
    return ([f"{kind} '{n}' added" for n in added]
            + [f"{kind} '{n}' removed" for n in removed])


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.12g}"


def _budget(budget: Budget | None) -> str:
    if budget is None:
        return "none"
    return f"ε {_number(budget.epsilon)}, δ {_number(budget.delta)}"


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _text(value: str | None) -> str:
    return "none" if value is None else repr(value)


def _limits(what: str, old: Limits | LimitsOverride | None,
            new: Limits | LimitsOverride | None) -> list[str]:
    out = []
    for field in ("max_rows", "timeout_s"):
        before = getattr(old, field, None) if old is not None else None
        after = getattr(new, field, None) if new is not None else None
        if before != after:
            out.append(f"{what}: {field} {_number(before)} → {_number(after)}")
    return out


def _table(name: str, old: Table, new: Table) -> list[str]:
    out = []
    if old.source != new.source:
        out.append(f"table '{name}': source changed")
    if old.row_filter != new.row_filter:
        out.append(f"table '{name}': row filter {_text(old.row_filter)} → "
                   f"{_text(new.row_filter)}")
    for field in ("privacy_unit", "max_rows_per_unit", "join_keys"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            out.append(f"table '{name}': {field} {before if before is not None else 'none'} → "
                       f"{after if after is not None else 'none'}")
    for column in sorted(set(old.columns) | set(new.columns)):
        before, after = old.columns.get(column), new.columns.get(column)
        b_mask, a_mask = (before.mask if before else None), (after.mask if after else None)
        if b_mask != a_mask:
            out.append(f"column '{name}.{column}': mask {_text(b_mask)} → {_text(a_mask)}")
        b_hidden, a_hidden = bool(before and before.hidden), bool(after and after.hidden)
        if b_hidden != a_hidden:
            out.append(f"column '{name}.{column}': {'hidden' if a_hidden else 'no longer hidden'}")
        b_bounds = (before.lower, before.upper) if before else (None, None)
        a_bounds = (after.lower, after.upper) if after else (None, None)
        if b_bounds != a_bounds:
            out.append(f"column '{name}.{column}': bounds [{_number(b_bounds[0])}, "
                       f"{_number(b_bounds[1])}] → [{_number(a_bounds[0])}, "
                       f"{_number(a_bounds[1])}]")
    return out


def _dataset_mode(role: Role, dataset: str) -> str:
    """The role's mode on ``dataset``: its grant's, else raw for an admin, else deny."""
    grant = role.datasets.get(dataset)
    if grant is None:
        return "raw" if role.admin else "deny"
    return grant.mode


def _table_mode(role: Role, dataset: str, table: str) -> str:
    grant = role.datasets.get(dataset)
    if grant is not None and table in grant.tables and grant.tables[table].mode is not None:
        return str(grant.tables[table].mode)
    return _dataset_mode(role, dataset)


def _summary(role: Role, policy: Policy) -> str:
    modes = [f"{ds}: {_dataset_mode(role, ds)}" for ds in sorted(policy.datasets)
             if _dataset_mode(role, ds) != "deny"]
    parts = ["admin"] if role.admin else []
    return ", ".join(parts + modes) or "no access"


def _role(name: str, old: Role, new: Role, old_policy: Policy, new_policy: Policy
          ) -> list[str]:
    who = f"role '{name}'"
    out = []
    if old.admin != new.admin:
        out.append(f"{who}: {'now an admin role' if new.admin else 'no longer an admin role'}")
    out += _limits(f"{who}: limits", old.limits, new.limits)
    if old.functions.allow != new.functions.allow:
        out.append(f"{who}: allowed functions {_list(old.functions.allow)} → "
                   f"{_list(new.functions.allow)}")
    for ds in sorted(set(old_policy.datasets) & set(new_policy.datasets)):
        before, after = _dataset_mode(old, ds), _dataset_mode(new, ds)
        if before != after:
            out.append(f"{who}: {ds} mode {before} → {after}")
        tables = set(old_policy.datasets[ds].tables) & set(new_policy.datasets[ds].tables)
        for t in sorted(tables):
            t_before, t_after = _table_mode(old, ds, t), _table_mode(new, ds, t)
            if t_before != t_after and (t_before, t_after) != (before, after):
                out.append(f"{who}: {ds}.{t} mode {t_before} → {t_after}")
        out += _grant(f"{who}: {ds}", old.datasets.get(ds), new.datasets.get(ds))
    return out


def _grant(prefix: str, old: DatasetGrant | None, new: DatasetGrant | None) -> list[str]:
    out = []
    for field, label in (("row_filter", "row filter"), ("min_group_size", "min group size"),
                         ("epsilon_per_query", "ε per query"),
                         ("min_epsilon_per_query", "min ε per query"),
                         ("max_epsilon_per_query", "max ε per query")):
        before = getattr(old, field) if old is not None else None
        after = getattr(new, field) if new is not None else None
        if before != after:
            show = _text if field == "row_filter" else _number
            out.append(f"{prefix} {label} {show(before)} → {show(after)}")
    before_budget = old.budget if old is not None else None
    after_budget = new.budget if new is not None else None
    if before_budget != after_budget:
        out.append(f"{prefix} budget {_budget(before_budget)} → {_budget(after_budget)}")
    old_tables = old.tables if old is not None else {}
    new_tables = new.tables if new is not None else {}
    for t in sorted(set(old_tables) | set(new_tables)):
        b, a = old_tables.get(t), new_tables.get(t)
        b_filter, a_filter = (b.row_filter if b else None), (a.row_filter if a else None)
        if b_filter != a_filter:
            out.append(f"{prefix}.{t} row filter {_text(b_filter)} → {_text(a_filter)}")
        b_hidden, a_hidden = (b.hidden if b else ()), (a.hidden if a else ())
        if b_hidden != a_hidden:
            out.append(f"{prefix}.{t} hidden columns {_list(b_hidden)} → {_list(a_hidden)}")
        b_size, a_size = (b.min_group_size if b else None), (a.min_group_size if a else None)
        if b_size != a_size:
            out.append(f"{prefix}.{t} min group size {_number(b_size)} → {_number(a_size)}")
    return out
