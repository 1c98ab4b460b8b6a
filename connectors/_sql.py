"""SQL literal quoting for connectors (paths and names only, never user SQL)."""

from __future__ import annotations


def string_literal(value: str) -> str:
    """Quote a Python string as a DuckDB string literal.

    >>> string_literal("it's")
    "'it''s'"
    """
    return "'" + value.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """Quote an identifier.

    >>> identifier('we"ird')
    '"we""ird"'
    """
    return '"' + name.replace('"', '""') + '"'
