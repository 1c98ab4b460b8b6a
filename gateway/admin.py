"""The gateway's own actions: what analysts ask for and what the data owner decides.

Each action is a plain function of ``(domain, principal, body)`` returning a
JSON-ready value; :func:`run` looks it up and checks, in this one place, that the
caller may run it: *owner* actions need a role with ``admin: true`` in the
policy, *analyst* actions are open to every user. ``docs/api.md`` documents the
bodies and results. Every action declares whether it changes something
(``audited``): :func:`run` records each call of those in the audit log (kind
``admin``, the body redacted), refused calls included; read-only ones are not
recorded. The owner's audit, status and policy actions live in
:mod:`gateway.admin_audit` and :mod:`gateway.admin_policy`.

Analyst actions resolve dataset names with :mod:`gateway.visible`: a dataset the
caller may not read gets the same answer as one that does not exist, and
suggestions come from what they can see.

Requests (for budget or access) live in the state store's ``requests`` table.
Approving a budget request adds its ε/δ to the user's allowance in the same
transaction that marks it approved, so a request is never half-applied.

>>> sorted(name for name, action in ACTIONS.items() if not action.owner)
['stockade.catalog', 'stockade.my_requests', 'stockade.request_access', 'stockade.request_budget', 'stockade.whoami']
>>> check_fields({"dataset": "x", "epsilom": 1}, ("dataset", "epsilon"))
Traceback (most recent call last):
...
gateway.errors.InputError: Unknown field 'epsilom'. Did you mean 'epsilon'? Fields: dataset, epsilon.
"""  # noqa: E501

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.domain import Domain
from gateway.errors import (
    InputError,
    NotSupportedError,
    PermissionDeniedError,
    StockadeError,
    did_you_mean,
)
from gateway.flightsql.server import json_body
from gateway.ledger import DELTA_UNIT, EPSILON_UNIT, Cost, to_units
from gateway.state import User, validate_attributes
from gateway.visible import hint, no_budget_message, seen_dataset, seen_modes
from policy.access import catalog_for
from policy.model import MODES, Budget
from policy.principal import Principal

log = logging.getLogger("stockade.admin")

Handler = Callable[[Domain, Principal, dict[str, Any]], Any]

REQUEST_KINDS = ("budget", "access")
REQUEST_STATUSES = ("pending", "approved", "denied")
#: Modes an analyst may ask for (``deny`` is not something one asks for).
REQUESTABLE_MODES = tuple(m for m in MODES if m != "deny")
MAX_REASON_LENGTH = 2000


@dataclass(frozen=True)
class Action:
    """One action: its name, who may run it, whether it is audited, what it does.

    ``audited`` actions (those that change something: users, budgets, requests,
    the policy) leave an ``admin`` record in the audit log each time they are
    called, also when refused; read-only ones do not, so that the console's
    reading does not flood the log.
    """

    name: str
    owner: bool
    description: str
    handler: Handler
    audited: bool


ACTIONS: dict[str, Action] = {}


def _action(name: str, description: str, *, owner: bool, audited: bool
            ) -> Callable[[Handler], Handler]:
    """Register an action; every action says whether it changes state (``audited``)."""
    def register(handler: Handler) -> Handler:
        ACTIONS[name] = Action(name, owner, description, handler, audited)
        return handler

    return register


def action_list() -> list[tuple[str, str]]:
    """``(name, description)`` of every action, for Flight ``ListActions``."""
    return [(a.name, ("Owner: " if a.owner else "") + a.description) for a in ACTIONS.values()]


def is_admin(domain: Domain, principal: Principal) -> bool:
    """Whether ``principal``'s role is an admin role of the domain's policy."""
    role = domain.policy.roles.get(principal.role)
    return role is not None and role.admin


def run(domain: Domain, principal: Principal, name: str, body: bytes | Mapping[str, Any]) -> Any:
    """Run the action ``name`` for ``principal`` with the (JSON) ``body``.

    An audited action is recorded once it has run or was refused (kind ``admin``
    in :mod:`gateway.audit`, the body redacted).
    """
    action = ACTIONS.get(name)
    if action is None:
        raise NotSupportedError(f"Unknown action '{name}'.{did_you_mean(name, ACTIONS)}")
    if not action.audited:
        return _run(domain, principal, action, body)
    try:
        result = _run(domain, principal, action, body)
    except Exception as exc:
        _record(domain, principal, name, body, exc)
        raise
    _record(domain, principal, name, body, None)
    return result


def _run(domain: Domain, principal: Principal, action: Action,
         body: bytes | Mapping[str, Any]) -> Any:
    if action.owner and not is_admin(domain, principal):
        raise PermissionDeniedError(f"Only the data owner (an admin role) may run {action.name}.")
    request = dict(body) if isinstance(body, Mapping) else parse_body(body)
    return action.handler(domain, principal, request)


def _record(domain: Domain, principal: Principal, name: str, body: bytes | Mapping[str, Any],
            error: BaseException | None) -> None:
    """Write the admin record of one audited call; a failure to write is logged."""
    try:
        request: Mapping[str, Any] | None = None
        if isinstance(body, Mapping):
            request = body
        else:
            try:
                request = parse_body(body)
            except InputError:  # recorded without its body
                request = None
        message = None
        if error is not None:
            message = (error.message if isinstance(error, StockadeError)
                       else f"internal error ({type(error).__name__})")
        domain.audit.admin_action(principal.user, principal.role, name, request, message)
    except Exception:
        log.exception("could not audit action %s by %s", name, principal.user)


# ---------------------------------------------------------------- body checking


#: The JSON object of an action body (empty means ``{}``).
parse_body = json_body


def check_fields(body: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Refuse fields the action does not take (a typo would otherwise be ignored)."""
    for key in body:
        if key not in allowed:
            raise InputError(
                f"Unknown field '{key}'.{did_you_mean(str(key), allowed)} "
                f"Fields: {', '.join(allowed) or 'none'}."
            )


def _text(body: Mapping[str, Any], key: str, *, required: bool = True,
          max_length: int = 200) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InputError(f"Field '{key}' is required.")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"Field '{key}' must be a non-empty string.")
    if len(value) > max_length:
        raise InputError(f"Field '{key}' must be at most {max_length} characters long.")
    return value


def _required_text(body: Mapping[str, Any], key: str, *, max_length: int = 200) -> str:
    value = _text(body, key, max_length=max_length)
    assert value is not None
    return value


def _amount(body: Mapping[str, Any], key: str, *, required: bool,
            positive: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InputError(f"Field '{key}' is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"Field '{key}' must be a finite number, not {json.dumps(value)}.")
    if value < 0 or (positive and value == 0):
        raise InputError(f"Field '{key}' must be {'> 0' if positive else '≥ 0'}, not {value}.")
    if key == "delta" and value >= 1:
        raise InputError(f"Field 'delta' must be < 1, not {value}.")
    return float(value)


def _bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"Field '{key}' must be true or false.")
    return value


def _dataset(domain: Domain, body: Mapping[str, Any]) -> str:
    """A dataset of the policy, for owner actions (analyst ones: :mod:`gateway.visible`)."""
    name = _required_text(body, "dataset")
    if name not in domain.policy.datasets:
        raise InputError(
            f"Field 'dataset': unknown dataset '{name}'."
            f"{did_you_mean(name, domain.policy.datasets)}"
        )
    return name


def _role(domain: Domain, body: Mapping[str, Any], *, required: bool) -> str | None:
    name = _text(body, "role", required=required)
    if name is not None and name not in domain.policy.roles:
        raise InputError(
            f"Field 'role': unknown role '{name}'.{did_you_mean(name, domain.policy.roles)} "
            f"Roles: {', '.join(sorted(domain.policy.roles))}."
        )
    return name


def _user(domain: Domain, body: Mapping[str, Any], key: str) -> User:
    name = _required_text(body, key)
    try:
        return domain.store.get_user(name)
    except LookupError:
        names = [u.name for u in domain.store.list_users()]
        raise InputError(
            f"Field '{key}': unknown user '{name}'.{did_you_mean(name, names)}"
        ) from None


def _request_id(body: Mapping[str, Any]) -> int:
    value = body.get("id")
    if value is None:
        raise InputError("Field 'id' is required.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"Field 'id' must be a positive integer, not {json.dumps(value)}.")
    return value


# ---------------------------------------------------------------- helpers


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _principal(user: User) -> Principal:
    return Principal(user.name, user.role, user.attributes)


def _dp_default(domain: Domain, principal: Principal, dataset: str) -> Budget | None:
    """The role's default budget for ``dataset`` if the principal reads it in dp mode."""
    for access in catalog_for(domain.policy, principal).values():
        if access.dataset == dataset and access.mode == "dp":
            return access.budget
    return None


_REQUEST_COLUMNS = ("id, user_name, kind, dataset, epsilon, delta, mode, reason, status,"
                    " decided_by, decision_reason, created_at, decided_at")


def _request_json(row: Sequence[Any]) -> dict[str, Any]:
    (id_, user, kind, dataset, eps, delta, mode, reason, status, decided_by,
     decision_reason, created_at, decided_at) = row
    return {"id": id_, "user": user, "kind": kind, "dataset": dataset,
            "epsilon": None if eps is None else eps / EPSILON_UNIT,
            "delta": None if delta is None else delta / DELTA_UNIT,
            "mode": mode, "reason": reason, "status": status,
            "decided_by": decided_by, "decision_reason": decision_reason,
            "created_at": _iso(created_at), "decided_at": _iso(decided_at)}


def _requests(domain: Domain, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    sql = f"SELECT {_REQUEST_COLUMNS} FROM requests"
    if where:
        sql += " WHERE " + where
    with domain.store._pool.connection() as con:
        rows = con.execute(sql + " ORDER BY id", tuple(params)).fetchall()
    return [_request_json(row) for row in rows]


def _fetch_request(con: sqlite3.Connection, request_id: int) -> tuple[Any, ...]:
    row = con.execute(
        f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (request_id,)
    ).fetchone()
    if row is None:
        raise InputError(f"Field 'id': there is no request {request_id}.")
    if row[8] != "pending":
        raise InputError(
            f"Request {request_id} was already {row[8]} by {row[9]}; "
            "a decided request cannot be decided again."
        )
    return tuple(row)


def _file_request(domain: Domain, principal: Principal, kind: str, dataset: str,
                  reason: str, *, epsilon: float | None = None, delta: float | None = None,
                  mode: str | None = None) -> dict[str, Any]:
    now = domain.ledger._clock()
    with domain.store._transaction() as con:
        cur = con.execute(
            "INSERT INTO requests (user_name, kind, dataset, epsilon, delta, mode, reason,"
            " status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (principal.user, kind, dataset,
             None if epsilon is None else to_units(epsilon, EPSILON_UNIT),
             None if delta is None else to_units(delta, DELTA_UNIT),
             mode, reason, now),
        )
        row = con.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (cur.lastrowid,)
        ).fetchone()
    return _request_json(row)


# ---------------------------------------------------------------- analyst actions


@_action("stockade.whoami", "Your name, role, attributes, datasets and modes, budgets",
         owner=False, audited=False)
def whoami(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, ())
    return {"user": principal.user, "role": principal.role,
            "admin": is_admin(domain, principal),
            "attributes": dict(principal.attributes),
            "datasets": [{"dataset": d, "mode": m}
                         for d, m in seen_modes(domain.policy, principal).items()],
            "budgets": domain.budgets(principal)}


@_action("stockade.request_budget",
         'Ask the owner for more ε/δ: {"dataset", "epsilon", "delta"?, "reason"}',
         owner=False, audited=True)
def request_budget(domain: Domain, principal: Principal, body: dict[str, Any]
                   ) -> dict[str, Any]:
    check_fields(body, ("dataset", "epsilon", "delta", "reason"))
    name = _required_text(body, "dataset")
    epsilon = _amount(body, "epsilon", required=True, positive=True)
    delta = _amount(body, "delta", required=False) or 0.0
    reason = _required_text(body, "reason", max_length=MAX_REASON_LENGTH)
    seen = seen_dataset(domain.policy, principal, name)
    if seen.mode != "dp":
        raise InputError(no_budget_message(seen, domain.policy, principal))
    return _file_request(domain, principal, "budget", name, reason,
                         epsilon=epsilon, delta=delta)


@_action("stockade.request_access",
         'Ask the owner for access to a dataset: {"dataset", "mode", "reason"}',
         owner=False, audited=True)
def request_access(domain: Domain, principal: Principal, body: dict[str, Any]
                   ) -> dict[str, Any]:
    check_fields(body, ("dataset", "mode", "reason"))
    name = _required_text(body, "dataset")
    mode = _required_text(body, "mode")
    if mode not in REQUESTABLE_MODES:
        raise InputError(
            f"Field 'mode': unknown mode '{mode}'.{did_you_mean(mode, REQUESTABLE_MODES)} "
            f"Modes: {', '.join(REQUESTABLE_MODES)}."
        )
    reason = _required_text(body, "reason", max_length=MAX_REASON_LENGTH)
    # Filed as written whatever it names: whether a dataset the caller cannot see
    # exists is for the owner to know (requests.list), not the analyst.
    out = _file_request(domain, principal, "access", name, reason, mode=mode)
    if seen_dataset(domain.policy, principal, name).mode is None:
        suggestion = hint(name, domain.policy, principal)
        if suggestion:
            out["note"] = (f"You see no dataset '{name}'.{suggestion} The request is filed "
                           "as written.")
    return out


@_action("stockade.my_requests", "Your requests and their decisions", owner=False, audited=False)
def my_requests(domain: Domain, principal: Principal, body: dict[str, Any]
                ) -> list[dict[str, Any]]:
    check_fields(body, ())
    return _requests(domain, "user_name = ?", (principal.user,))


# ---------------------------------------------------------------- owner actions: users


@_action("stockade.users.list", "All users of the domain", owner=True, audited=False)
def users_list(domain: Domain, principal: Principal, body: dict[str, Any]
               ) -> list[dict[str, Any]]:
    check_fields(body, ())
    return [user.to_json() for user in domain.store.list_users()]


@_action("stockade.users.create",
         'Create a user: {"name", "role", "password", "attributes"?}', owner=True, audited=True)
def users_create(domain: Domain, principal: Principal, body: dict[str, Any]
                 ) -> dict[str, Any]:
    check_fields(body, ("name", "role", "password", "attributes"))
    name = _required_text(body, "name")
    role = _role(domain, body, required=True)
    assert role is not None
    password = body.get("password")
    if not isinstance(password, str):
        raise InputError("Field 'password' is required and must be a string.")
    attributes = validate_attributes(body.get("attributes"))
    return domain.store.add_user(name, role, password, attributes).to_json()


@_action("stockade.users.update",
         'Change a user: {"name", "role"?, "attributes"?, "disabled"?}', owner=True, audited=True)
def users_update(domain: Domain, principal: Principal, body: dict[str, Any]
                 ) -> dict[str, Any]:
    check_fields(body, ("name", "role", "attributes", "disabled"))
    user = _user(domain, body, "name")
    role = _role(domain, body, required=False)
    attributes = (validate_attributes(body["attributes"])
                  if body.get("attributes") is not None else None)
    disabled = _bool(body, "disabled")
    if role is None and attributes is None and disabled is None:
        raise InputError("Nothing to change: give 'role', 'attributes' or 'disabled'.")
    if user.name.lower() == principal.user.lower():
        new_role = domain.policy.roles.get(role) if role is not None else None
        if disabled or (new_role is not None and not new_role.admin):
            raise InputError("You cannot disable yourself or drop your own admin role; "
                             "ask another owner.")
    updated = user
    if role is not None:
        updated = domain.store.set_role(user.name, role)
    if attributes is not None:
        updated = domain.store.set_attributes(user.name, attributes)
    if disabled is not None and disabled != user.disabled:
        updated = domain.store.set_disabled(user.name, disabled)
    return updated.to_json()


@_action("stockade.users.reset_password",
         'Set a new password and end the user\'s sessions: {"name", "password"}',
         owner=True, audited=True)
def users_reset_password(domain: Domain, principal: Principal, body: dict[str, Any]
                         ) -> dict[str, Any]:
    check_fields(body, ("name", "password"))
    user = _user(domain, body, "name")
    password = body.get("password")
    if not isinstance(password, str):
        raise InputError("Field 'password' is required and must be a string.")
    domain.store.set_password(user.name, password)
    return {"name": user.name, "sessions_ended": True}


# ---------------------------------------------------------------- owner actions: budgets


def _budget_change(domain: Domain, body: dict[str, Any], *, add: bool) -> dict[str, Any]:
    check_fields(body, ("user", "dataset", "epsilon", "delta"))
    user = _user(domain, body, "user")
    dataset = _dataset(domain, body)
    epsilon = _amount(body, "epsilon", required=True)
    assert epsilon is not None
    delta = _amount(body, "delta", required=False)
    default = _dp_default(domain, _principal(user), dataset)
    if add:
        balance = domain.ledger.add_allowance(user.name, dataset, epsilon, delta or 0.0,
                                              default=default)
    else:
        if delta is None:
            delta = default.delta if default is not None else 0.0
        balance = domain.ledger.set_allowance(user.name, dataset, epsilon, delta)
    out = balance.to_json()
    if default is None:
        out["note"] = (f"'{user.name}' does not read '{dataset}' in dp mode; "
                       "the budget applies once their role does.")
    return out


@_action("stockade.budget.set",
         'Set a user\'s total ε/δ for a dataset: {"user", "dataset", "epsilon", "delta"?}',
         owner=True, audited=True)
def budget_set(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    return _budget_change(domain, body, add=False)


@_action("stockade.budget.add",
         'Add ε/δ to a user\'s budget for a dataset: {"user", "dataset", "epsilon", "delta"?}',
         owner=True, audited=True)
def budget_add(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    return _budget_change(domain, body, add=True)


# ---------------------------------------------------------------- owner actions: requests


@_action("stockade.requests.list", 'Requests, oldest first: {"status"?}', owner=True, audited=False)
def requests_list(domain: Domain, principal: Principal, body: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    check_fields(body, ("status",))
    status = _text(body, "status", required=False)
    if status is not None and status not in REQUEST_STATUSES:
        raise InputError(
            f"Field 'status': unknown status '{status}'."
            f"{did_you_mean(status, REQUEST_STATUSES)} Statuses: {', '.join(REQUEST_STATUSES)}."
        )
    rows = _requests(domain) if status is None else _requests(domain, "status = ?", (status,))
    for row in rows:  # the owner sees what the analyst may not: is it a dataset at all?
        row["dataset_in_policy"] = row["dataset"] in domain.policy.datasets
    return rows


@_action("stockade.requests.approve",
         'Approve a request (a budget one adds its ε/δ): {"id", "epsilon"?, "delta"?, "reason"?}',
         owner=True, audited=True)
def requests_approve(domain: Domain, principal: Principal, body: dict[str, Any]
                     ) -> dict[str, Any]:
    check_fields(body, ("id", "epsilon", "delta", "reason"))
    request_id = _request_id(body)
    epsilon = _amount(body, "epsilon", required=False, positive=True)
    delta = _amount(body, "delta", required=False)
    reason = _text(body, "reason", required=False, max_length=MAX_REASON_LENGTH)
    # The request's user and their role's default budget, read before the write lock.
    with domain.store._pool.connection() as con:
        peek = con.execute("SELECT user_name, dataset, kind FROM requests WHERE id = ?",
                           (request_id,)).fetchone()
    default = None
    if peek is not None and peek[2] == "budget":
        try:
            owner_of = domain.store.get_user(peek[0])
        except LookupError:
            raise InputError(f"Request {request_id}: user '{peek[0]}' no longer exists.") from None
        default = _dp_default(domain, _principal(owner_of), peek[1])
    ledger = domain.ledger
    now = ledger._clock()
    with domain.store._transaction() as con:
        row = _fetch_request(con, request_id)
        user, kind, dataset = row[1], row[2], row[3]
        if kind == "budget":
            if epsilon is not None:
                eps_units = to_units(Cost(epsilon).epsilon, EPSILON_UNIT)
            else:
                eps_units = int(row[4])
            delta_units = (to_units(delta, DELTA_UNIT) if delta is not None
                           else int(row[5] or 0))
            u = ledger._units(con, user, dataset, default)
            ledger._write_allowance(con, user, dataset, u.allowance[0] + eps_units,
                                    u.allowance[1] + delta_units)
            con.execute("UPDATE requests SET epsilon = ?, delta = ? WHERE id = ?",
                        (eps_units, delta_units, request_id))
        elif epsilon is not None or delta is not None:
            raise InputError("Fields 'epsilon' and 'delta' apply to budget requests only.")
        con.execute(
            "UPDATE requests SET status = 'approved', decided_by = ?, decision_reason = ?,"
            " decided_at = ? WHERE id = ?",
            (principal.user, reason, now, request_id),
        )
        decided = con.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
    out = _request_json(decided)
    if kind == "budget":
        out["budget"] = ledger.balance(user, dataset, default=default).to_json()
    elif dataset not in domain.policy.datasets:
        out["note"] = (f"'{dataset}' is not a dataset of the policy: approving records the "
                       "decision only. Add the dataset and grant the mode to the user's role "
                       "for access to follow.")
    else:
        out["note"] = ("Access follows the policy: grant the mode to the user's role "
                       "in the policy for it to take effect.")
    return out


@_action("stockade.requests.deny", 'Deny a request: {"id", "reason"}', owner=True, audited=True)
def requests_deny(domain: Domain, principal: Principal, body: dict[str, Any]
                  ) -> dict[str, Any]:
    check_fields(body, ("id", "reason"))
    request_id = _request_id(body)
    reason = _required_text(body, "reason", max_length=MAX_REASON_LENGTH)
    with domain.store._transaction() as con:
        _fetch_request(con, request_id)
        con.execute(
            "UPDATE requests SET status = 'denied', decided_by = ?, decision_reason = ?,"
            " decided_at = ? WHERE id = ?",
            (principal.user, reason, domain.ledger._clock(), request_id),
        )
        row = con.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
    return _request_json(row)


# Actions defined in other modules register themselves here, once the helpers above exist.
from gateway import admin_audit, admin_catalog, admin_policy  # noqa: E402,F401
