"""A candidate policy: YAML text checked and built beside the live one.

:func:`prepare` reads the text as if it were the domain's policy file (same
file name in messages, relative sources resolved against the file's
directory), builds its engine in a directory of its own under the data
directory, and runs the checks of ``stockade policy check --data-dir`` on it:
names and lines (the loader), every column against the real sources, every
row filter and mask bound on DuckDB for every role that reads the table, and
every stored user's attributes. It never touches the live domain; the
candidate's state is either swapped in (:meth:`gateway.domain.Domain.replace_policy`)
or discarded.

>>> err = PolicyError("Unknown key 'rolse'", where="rolse", file="p.yaml", line=4)
>>> error_json(err)
{'line': 4, 'path': 'rolse', 'message': "Unknown key 'rolse'"}
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.domain import ENGINES_DIR, Domain, build_engine
from gateway.errors import InputError, PolicyError, StockadeError
from gateway.policy_state import PolicyState
from gateway.policy_tools import check_types, check_users, located
from policy.loader import parse_policy_for
from policy.model import Policy
from policy.principal import Principal

#: How many errors a refused replacement names in its message.
ERRORS_SHOWN = 3


@dataclass
class Candidate:
    """The outcome of :func:`prepare`: the policy, its state if built, what is wrong."""

    text: str
    policy: Policy | None = None
    state: PolicyState | None = None
    errors: list[PolicyError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state is not None and not self.errors

    def discard(self) -> None:
        """Close the candidate's engine and delete its directory."""
        if self.state is not None:
            self.state.engine.retire()
            self.state = None

    def failure(self, what: str = "The policy was not replaced") -> InputError:
        """One error naming the first problems, with their lines."""
        shown = "; ".join(_located_text(e) for e in self.errors[:ERRORS_SHOWN])
        more = len(self.errors) - ERRORS_SHOWN
        if more > 0:
            shown += f" (and {more} more: validate it to see them all)"
        return InputError(f"{what}: {shown}")


def prepare(domain: Domain, text: str, *, principal: Principal | None = None,
            full: bool = True) -> Candidate:
    """Check ``text`` as ``domain``'s next policy and build its state (see the module doc).

    ``full`` false skips the checks that bind filters, masks and users (a dry
    run only needs the policy and its engine). ``principal``, the owner making
    the change, must keep an admin role.
    """
    candidate = Candidate(text)
    live = domain.policy
    if live.file is None:
        raise InputError("This domain was not started from a policy file.")
    try:
        policy = parse_policy_for(text, live.file)
    except PolicyError as err:
        candidate.errors.append(err)
        return candidate
    candidate.policy = policy
    candidate.errors += _admin_errors(policy, principal)
    if policy.domain.name != live.domain.name:
        candidate.warnings.append(
            f"the domain's name changes from '{live.domain.name}' to '{policy.domain.name}': "
            "clients and network configurations that name it must change too")
    work_dir = domain.store.data_dir / ENGINES_DIR / uuid.uuid4().hex[:16]
    try:
        engine = build_engine(policy, work_dir, limits=domain.engine.limits)
    except BaseException as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        if not isinstance(exc, StockadeError):
            raise
        candidate.errors.append(exc if isinstance(exc, PolicyError)
                                else PolicyError(exc.message, file=policy.file))
        return candidate
    try:
        candidate.state = PolicyState(policy, engine, domain.ledger, text=text,
                                      limits=domain.state.limits)
    except BaseException as exc:
        engine.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        if not isinstance(exc, PolicyError):
            raise
        candidate.errors.append(located(exc, text))
        return candidate
    if full:
        try:
            view = domain.view(candidate.state)
            candidate.errors += check_types(view, text=text)
            user_errors, warnings = check_users(view, text=text)
        except BaseException:
            candidate.discard()
            raise
        candidate.errors += user_errors
        candidate.warnings += warnings
    return candidate


def _admin_errors(policy: Policy, principal: Principal | None) -> list[PolicyError]:
    """The policy must keep an admin role, and the owner changing it must keep theirs."""
    admins = [name for name, role in policy.roles.items() if role.admin]
    if not admins:
        return [PolicyError("The policy has no admin role (a role with 'admin: true'): nobody "
                            "could run the owner actions, and the gateway would not start; "
                            "add one, e.g. 'owner: {admin: true}'",
                            where="roles", file=policy.file, line=policy.line_of("roles"))]
    if principal is not None and principal.role not in admins:
        where = f"roles.{principal.role}"
        return [PolicyError(f"Your role '{principal.role}' would no longer be an admin role, "
                            "so you could not change the policy again; keep 'admin: true' on "
                            "it, or make the change as a user of another admin role",
                            where=where, file=policy.file, line=policy.line_of(where))]
    return []


def bare_message(err: PolicyError) -> str:
    """``err``'s message without the ``file:line: path:`` prefix."""
    prefix = ""
    if err.file is not None:
        prefix = f"{err.file}:{err.line}: " if err.line is not None else f"{err.file}: "
    elif err.line is not None:
        prefix = f"line {err.line}: "
    if err.where:
        prefix += f"{err.where}: "
    return err.message[len(prefix):] if err.message.startswith(prefix) else err.message


def error_json(err: PolicyError) -> dict[str, Any]:
    """``{"line", "path", "message"}`` of one error, for the admin API."""
    return {"line": err.line, "path": err.where, "message": bare_message(err)}


def _located_text(err: PolicyError) -> str:
    parts = []
    if err.line is not None:
        parts.append(f"line {err.line}")
    if err.where:
        parts.append(err.where)
    parts.append(bare_message(err))
    return ": ".join(parts)
