"""SQL LIKE patterns of the Flight SQL catalog calls, matched in linear time.

GetDbSchemas and GetTables filter names with SQL LIKE patterns: ``%`` matches
any run of characters (none included), ``_`` exactly one, and the escape
character the server announces in GetSqlInfo (``SQL_SEARCH_STRING_ESCAPE``,
a backslash) makes the next character literal. Matching is case-sensitive, on
characters (code points), as DuckDB's ``LIKE … ESCAPE '\\'``.

A pattern is compiled once (:func:`compile_like`) into the fixed-length pieces
between its ``%`` (runs of ``%`` collapse into one), and matched without
regular expressions or backtracking: the first piece must start the name, the
last must end it, and each piece in between is found at its leftmost place
after the previous one (the greedy choice is always right when only ``%`` has
a variable length). Each piece is looked for once, so a match costs at most
(pattern length × name length) character comparisons, and a name shorter than
the pattern's fixed characters is refused at once. Patterns are also bounded in
length by the servers (:func:`check_length`, setting ``max_pattern_length``).

>>> p = compile_like("scr%ing_")
>>> p.matches("screenings"), p.matches("screening"), p.matches("SCREENINGS")
(True, False, False)
>>> compile_like("%" * 10_000 + "x").parts  # thousands of % are one gap
('', 'x')
>>> like_match("100\\\\%", "100%"), like_match("100\\\\%", "1000")
(True, False)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from gateway.errors import InputError

#: The escape character of catalog patterns (announced as SQL_SEARCH_STRING_ESCAPE).
ESCAPE = "\\"
#: The longest catalog pattern a server accepts unless configured otherwise.
DEFAULT_MAX_PATTERN_LENGTH = 256
#: Stands for ``_`` inside a piece (a private-use character; escaped ones are kept apart).
_ANY = "\ue000"


@dataclass(frozen=True)
class _Piece:
    """A fixed-length run of a pattern: ``text``, with ``_`` at the ``wild`` offsets."""

    text: str
    wild: tuple[int, ...]

    def find(self, value: str, start: int, stop: int) -> int:
        """The leftmost offset in ``[start, stop - len]`` where the piece fits, or -1."""
        if not self.wild:
            return value.find(self.text, start, stop)
        for at in range(start, stop - len(self.text) + 1):
            if _fits(self, value, at):
                return at
        return -1


def _fits(piece: _Piece, value: str, at: int) -> bool:
    """Whether ``piece`` matches ``value`` at offset ``at`` (the caller leaves room)."""
    if not piece.wild:
        return value.startswith(piece.text, at)
    text = piece.text
    wild = piece.wild
    w = 0
    for k, ch in enumerate(text):
        if w < len(wild) and wild[w] == k:
            w += 1
            continue
        if value[at + k] != ch:
            return False
    return True


@dataclass(frozen=True)
class LikePattern:
    """A compiled LIKE pattern: the pieces between its ``%`` (see :func:`compile_like`)."""

    pieces: tuple[_Piece, ...]
    min_length: int  # the characters every match needs: the pattern's, but for its %

    @property
    def parts(self) -> tuple[str, ...]:
        """The pieces as text, ``_`` shown as ``_`` (for reading; escapes are resolved)."""
        return tuple(p.text.replace(_ANY, "_") if p.wild else p.text for p in self.pieces)

    def matches(self, value: str) -> bool:
        """Whether ``value`` matches the whole pattern."""
        pieces = self.pieces
        if len(value) < self.min_length:
            return False
        if len(pieces) == 1:  # no %: the name has exactly the pattern's length
            return len(value) == self.min_length and _fits(pieces[0], value, 0)
        first, last = pieces[0], pieces[-1]
        end = len(value) - len(last.text)  # first and last cannot overlap: see min_length
        if not _fits(first, value, 0) or not _fits(last, value, end):
            return False
        at = len(first.text)
        for piece in pieces[1:-1]:
            found = piece.find(value, at, end)
            if found < 0:
                return False
            at = found + len(piece.text)
        return True


@functools.lru_cache(maxsize=256)
def compile_like(pattern: str, escape: str = ESCAPE) -> LikePattern:
    """Compile a LIKE pattern; :class:`InputError` if it ends with a lone escape.

    >>> compile_like("a\\\\_b%c_").parts
    ('a_b', 'c_')
    >>> compile_like("a\\\\")
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: The pattern 'a\\\\' ends with the escape character '\\\\': \
write '\\\\\\\\' for a literal '\\\\', or remove it.
    """
    pieces: list[_Piece] = []
    text: list[str] = []
    wild: list[int] = []
    after_gap = False  # the last character was a %
    chars = iter(pattern)
    for ch in chars:
        if ch == "%" and after_gap:
            continue  # %% is %
        after_gap = ch == "%"
        if ch == escape:
            literal = next(chars, None)
            if literal is None:
                raise InputError(
                    f"The pattern {pattern!r} ends with the escape character {escape!r}: "
                    f"write {escape * 2!r} for a literal {escape!r}, or remove it."
                )
            text.append(literal)
        elif ch == "%":
            pieces.append(_Piece("".join(text), tuple(wild)))
            text, wild = [], []
        elif ch == "_":
            wild.append(len(text))
            text.append(_ANY)
        else:
            text.append(ch)
    pieces.append(_Piece("".join(text), tuple(wild)))
    return LikePattern(tuple(pieces), sum(len(p.text) for p in pieces))


def like_match(pattern: str | None, value: str | None, escape: str = ESCAPE) -> bool:
    """Whether ``value`` matches the LIKE ``pattern``; a ``None`` pattern matches everything.

    >>> like_match("%", "x"), like_match("p_tients", "patients"), like_match("a%", "ba")
    (True, True, False)
    >>> like_match(None, "anything"), like_match("x", None)
    (True, False)
    """
    if pattern is None:
        return True
    if value is None:
        return False
    return compile_like(pattern, escape).matches(value)


def check_length(pattern: str | None, limit: int, what: str) -> None:
    """Refuse a pattern longer than ``limit`` characters (setting ``max_pattern_length``).

    >>> check_length("%", 256, "table name")
    >>> check_length("%" * 300, 256, "table name")
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: The table name pattern is 300 characters long; this server \
accepts at most 256 (setting max_pattern_length). Use a shorter pattern, e.g. the name itself \
or a prefix and '%'.
    """
    if pattern is not None and len(pattern) > limit:
        raise InputError(
            f"The {what} pattern is {len(pattern)} characters long; this server accepts at "
            f"most {limit} (setting max_pattern_length). Use a shorter pattern, e.g. the "
            "name itself or a prefix and '%'."
        )
