"""Owner-written SQL fragments: row filters and column masks.

A fragment is parsed once (cached) in the DuckDB dialect. ``{user.ATTR}``
placeholders become named sqlglot placeholders at parse time and are bound, per
query, to *typed literals* from the principal's attributes by
:func:`bind_attributes`; an attribute's value is never pasted into SQL text.

>>> from policy.principal import Principal
>>> e = parse_fragment("site = {user.site}")
>>> attributes_used(e)
('site',)
>>> bind_attributes(e, Principal("a", "r", {"site": "o'hara"})).sql("duckdb")
"site = 'o''hara'"

``{secret.NAME}`` placeholders (the policy's ``secrets:``) stay placeholders,
marked as secrets, through every rule; :func:`bind_secrets` binds them last,
as string literals, and also gives the query to show, where they read
``{secret.NAME}`` again:

>>> m = parse_fragment("sha256({secret.salt} || name)")
>>> secrets_used(m)
('salt',)
>>> real, shown = bind_secrets(m, {"salt": "pepper"})
>>> real.sql("duckdb"), shown.sql("duckdb")
("SHA256('pepper' || name)", 'SHA256({secret.salt} || name)')
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from sqlglot import exp, parse_one
from sqlglot.errors import ParseError

from gateway.errors import InputError
from policy.principal import Principal

ATTR_PREFIX = "__stockade_user_"
SECRET_PREFIX = "__stockade_secret_"
# The meta key that marks a placeholder as a policy secret. The analyst's SQL
# can spell a placeholder with the same name, but never carries this mark, so
# only the policy's own placeholders are ever bound to a secret's value.
SECRET_META = "stockade_secret"
_PLACEHOLDER = re.compile(r"\{\s*(user|secret)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_LOOSE_PLACEHOLDER = re.compile(r"\{\s*[A-Za-z_]\w*\s*\.[^{}]*\}")


class FragmentError(InputError):
    """A row filter or mask that does not parse or is not allowed (located by the caller)."""


def _substitute(text: str) -> str:
    """Replace ``{user.X}`` outside string literals with a named placeholder."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            end = i + 1
            while end < len(text):
                if text[end] == "'" and text[end + 1 : end + 2] == "'":
                    end += 2
                    continue
                if text[end] == "'":
                    break
                end += 1
            literal = text[i : end + 1]
            if _PLACEHOLDER.search(literal):
                raise FragmentError(
                    "{user.…} and {secret.…} placeholders must not be quoted: write "
                    "site = {user.site}, the value is bound as a typed literal"
                )
            out.append(literal)
            i = end + 1
            continue
        m = _PLACEHOLDER.match(text, i)
        if m:
            prefix = ATTR_PREFIX if m.group(1) == "user" else SECRET_PREFIX
            out.append(f":{prefix}{m.group(2)}")
            i = m.end()
            continue
        if ch == "{":
            loose = _LOOSE_PLACEHOLDER.match(text, i)
            if loose:
                raise FragmentError(
                    f"Malformed placeholder {loose.group(0)!r}; write {{user.ATTRIBUTE}} "
                    "or {secret.NAME}"
                )
        out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> exp.Expr:
    if not text.strip():
        raise FragmentError("The expression is empty")
    try:
        parsed = parse_one(_substitute(text), read="duckdb")
    except ParseError as err:
        first = err.errors[0] if err.errors else {}
        raise FragmentError(
            f"Invalid SQL expression {text!r}: {first.get('description', str(err))}"
        ) from None
    if isinstance(parsed, (exp.Query, exp.Command, exp.DDL, exp.DML)):
        raise FragmentError(f"Expected an expression, not a statement: {text!r}")
    if parsed.find(exp.Query, exp.Table) is not None:
        raise FragmentError(f"Subqueries and table references are not allowed in {text!r}")
    for node in parsed.find_all(exp.Placeholder):
        name = str(node.name)
        if name.startswith(SECRET_PREFIX):
            node.meta[SECRET_META] = name[len(SECRET_PREFIX) :]
        elif not name.startswith(ATTR_PREFIX):
            raise FragmentError(
                f"Parameters are not allowed in {text!r}; use {{user.ATTRIBUTE}}"
            )
    return parsed


def parse_fragment(text: str) -> exp.Expr:
    """Parse an owner-written expression; returns a fresh copy each time."""
    return _parse_cached(text).copy()


def attributes_used(expression: exp.Expr) -> tuple[str, ...]:
    """Names of the ``{user.ATTR}`` placeholders in ``expression``, in order, unique."""
    names: list[str] = []
    for node in expression.find_all(exp.Placeholder):
        if str(node.name).startswith(ATTR_PREFIX) and SECRET_META not in node.meta:
            name = str(node.name)[len(ATTR_PREFIX) :]
            if name not in names:
                names.append(name)
    return tuple(names)


def _secret_name(node: exp.Expr) -> str | None:
    name = node.meta.get(SECRET_META) if isinstance(node, exp.Placeholder) else None
    return name if isinstance(name, str) else None


def secrets_used(expression: exp.Expr) -> tuple[str, ...]:
    """Names of the ``{secret.NAME}`` placeholders in ``expression``, in order, unique."""
    names: list[str] = []
    for node in expression.find_all(exp.Placeholder):
        name = _secret_name(node)
        if name is not None and name not in names:
            names.append(name)
    return tuple(names)


def bind_secrets(
    expression: exp.Expr, secrets: Mapping[str, str]
) -> tuple[exp.Expr, exp.Expr]:
    """``(to run, to show)``: copies of ``expression`` with the policy's secrets bound.

    In the first, each ``{secret.NAME}`` is a string literal; in the second it
    reads ``{secret.NAME}``. Both are ``expression`` itself when it uses none.
    A name missing from ``secrets`` means the policy was not validated: refused.
    """
    if not secrets_used(expression):
        return expression, expression
    real, shown = expression.copy(), expression.copy()
    for target, show in ((real, False), (shown, True)):
        for node in list(target.find_all(exp.Placeholder)):
            name = _secret_name(node)
            if name is None:
                continue
            if name not in secrets:
                raise FragmentError(f"The policy has no secret '{name}'")
            value = exp.var(f"{{secret.{name}}}") if show else exp.Literal.string(secrets[name])
            node.replace(value)
    return real, shown


def literal_for(value: object) -> exp.Expr:
    """A typed SQL literal for an attribute value.

    >>> literal_for(True).sql(), literal_for(3).sql(), literal_for("x").sql()
    ('TRUE', '3', "'x'")
    """
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    if isinstance(value, str):
        return exp.Literal.string(value)
    raise FragmentError(
        f"User attribute values must be text, numbers or booleans, not {type(value).__name__}"
    )


def bind_attributes(expression: exp.Expr, principal: Principal) -> exp.Expr:
    """``expression`` (copied) with every ``{user.ATTR}`` replaced by a literal."""
    bound = expression.copy()
    for node in list(bound.find_all(exp.Placeholder)):
        if _secret_name(node) is not None:
            continue  # bound last, by bind_secrets
        name = str(node.name)[len(ATTR_PREFIX) :]
        if name not in principal.attributes:
            raise FragmentError(
                f"User '{principal.user}' has no attribute '{name}', which the policy's "
                f"row filter needs; the owner can set it with "
                f"`stockade users add {principal.user} --attr {name}=VALUE`"
            )
        node.replace(literal_for(principal.attributes[name]))
    return bound


def columns_used(expression: exp.Expr) -> list[exp.Column]:
    """Every column reference in ``expression``."""
    return list(expression.find_all(exp.Column))
