"""The owner's policy actions: get, versions, validate, replace, dry run.

Registered with :func:`gateway.admin._action` (imported at the end of
:mod:`gateway.admin`); ``docs/api.md`` documents the bodies and results.

- ``stockade.policy.get`` and ``stockade.policy.versions`` read the versions
  kept in the state store (:mod:`gateway.policy_versions`);
- ``stockade.policy.validate`` checks a candidate YAML as ``stockade policy
  check --data-dir`` does and says what it would change, touching nothing;
- ``stockade.policy.replace`` makes it live, atomically and without a restart
  (:meth:`gateway.domain.Domain.replace_policy`);
- ``stockade.policy.dry_run`` shows what a query becomes for a user under the
  live or a candidate policy: nothing is run and nothing is charged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import policy_versions
from gateway.admin import (
    MAX_REASON_LENGTH,
    _action,
    _amount,
    _required_text,
    _text,
    _user,
    check_fields,
)
from gateway.domain import Domain
from gateway.errors import InputError, StockadeError
from gateway.ledger import BudgetExceededError, Cost
from gateway.policy_candidate import error_json, prepare
from gateway.policy_changes import changes, text_diff
from gateway.policy_tools import explain
from gateway.state import User
from policy.model import Policy
from policy.principal import Principal

#: The largest policy text the actions take (characters).
MAX_YAML_LENGTH = 1_000_000
MAX_QUERY_LENGTH = 100_000


def _version_field(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"Field '{key}' must be a positive integer, not {json.dumps(value)}.")
    return value


def _yaml(body: Mapping[str, Any], *, required: bool = True) -> str | None:
    return _text(body, "yaml", required=required, max_length=MAX_YAML_LENGTH)


def _live_text(domain: Domain) -> str:
    text = domain.state.text
    if text is not None:
        return text
    file = domain.policy.file
    return Path(file).read_text(encoding="utf-8") if file else ""


def _diff(old_text: str, old_version: int | None, new_text: str, new_name: str) -> str:
    label = f"version {old_version}" if old_version is not None else "live"
    return text_diff(old_text, new_text, old_name=label, new_name=new_name)


@_action("stockade.policy.get", 'A version of the policy (default: the live one): {"version"?}',
         owner=True, audited=False)
def policy_get(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, ("version",))
    version = _version_field(body, "version")
    found = policy_versions.get(domain.store, version if version is not None
                                else domain.policy_version)
    return found.to_json(live=found.version == domain.policy_version)


@_action("stockade.policy.versions", "Every version of the policy, newest first", owner=True,
         audited=False)
def policy_versions_list(domain: Domain, principal: Principal, body: dict[str, Any]
                         ) -> list[dict[str, Any]]:
    check_fields(body, ())
    live = domain.policy_version
    return [v.to_json(live=v.version == live, text=False)
            for v in policy_versions.versions(domain.store)]


@_action("stockade.policy.validate",
         'Check a policy and see what it would change, changing nothing: {"yaml"}', owner=True,
         audited=False)
def policy_validate(domain: Domain, principal: Principal, body: dict[str, Any]
                    ) -> dict[str, Any]:
    check_fields(body, ("yaml",))
    text = _yaml(body)
    assert text is not None
    live = domain.state
    live_text = _live_text(domain)
    candidate = prepare(domain, text, principal=principal)
    try:
        return {
            "ok": candidate.ok,
            "errors": [error_json(e) for e in candidate.errors],
            "warnings": list(candidate.warnings),
            "diff": _diff(live_text, live.version, text, "candidate"),
            "changes": (changes(live.policy, candidate.policy)
                        if candidate.policy is not None else []),
        }
    finally:
        candidate.discard()


@_action("stockade.policy.replace",
         'Make a policy live at once, without a restart: {"yaml", "comment"?, '
         '"expected_version"?}', owner=True, audited=True)
def policy_replace(domain: Domain, principal: Principal, body: dict[str, Any]
                   ) -> dict[str, Any]:
    check_fields(body, ("yaml", "comment", "expected_version"))
    text = _yaml(body)
    assert text is not None
    comment = _text(body, "comment", required=False, max_length=MAX_REASON_LENGTH)
    expected = _version_field(body, "expected_version")
    previous_text = _live_text(domain)
    done = domain.replace_policy(text, by=principal.user, comment=comment,
                                 expected_version=expected, principal=principal)
    previous: Policy = done.previous.policy
    return {
        "version": done.state.version,
        "previous_version": done.previous.version,
        "diff": _diff(done.previous.text or previous_text, done.previous.version,
                      text, f"version {done.state.version}"),
        "changes": changes(previous, done.state.policy),
    }


@_action("stockade.policy.dry_run",
         'What a query becomes for a user under the live or a candidate policy, running and '
         'charging nothing: {"query", "user", "yaml"?, "dialect"?, "epsilon"?}', owner=True,
         audited=False)
def policy_dry_run(domain: Domain, principal: Principal, body: dict[str, Any]
                   ) -> dict[str, Any]:
    check_fields(body, ("query", "user", "yaml", "dialect", "epsilon"))
    query = _required_text(body, "query", max_length=MAX_QUERY_LENGTH)
    user = _user(domain, body, "user")
    dialect = _text(body, "dialect", required=False)
    epsilon = _amount(body, "epsilon", required=False, positive=True)
    text = _yaml(body, required=False)
    if text is None:
        with domain.pinned() as state:
            return _dry_run(domain.view(state), user, query, dialect, epsilon, state.text)
    candidate = prepare(domain, text, full=False)
    try:
        if candidate.state is None or candidate.errors:
            raise candidate.failure("The candidate policy is not valid")
        return _dry_run(domain.view(candidate.state), user, query, dialect, epsilon, text)
    finally:
        candidate.discard()


def _dry_run(view: Domain, user: User, query: str, dialect: str | None,
             epsilon: float | None, text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "user": user.name, "role": user.role, "decision": "refused", "error": None,
        "tables": [], "rewritten_sql": None, "epsilon": None, "delta": None,
        "remaining_epsilon": None,
    }
    try:
        shown = explain(view, user.name, query, dialect=dialect, epsilon=epsilon, text=text)
    except StockadeError as err:
        out["error"] = err.message
        return out
    out["tables"] = [{"dataset": t.dataset, "table": t.table, "mode": t.mode}
                     for t in shown.tables]
    out["rewritten_sql"] = shown.sql
    out["decision"] = "allowed"
    if shown.dp is not None:
        eps, delta = shown.dp.charge
        out.update(rewritten_sql=shown.dp.aggregate_sql, relation_sql=shown.sql,
                   epsilon=eps, delta=delta, remaining_epsilon=shown.dp.remaining_epsilon,
                   answered_before=shown.dp.answered_before)
        plan = view.dp_plan(view.principal_for(user), query, dialect=dialect, epsilon=epsilon)
        assert plan is not None
        try:
            view.ledger.check(user.name, plan.dataset, Cost(eps, delta),
                              default=plan.query.access.budget)
        except BudgetExceededError as err:
            out.update(decision="refused", error=err.message)
    return out
