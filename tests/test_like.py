"""LIKE patterns of the catalog calls (gateway.flightsql.like): DuckDB's answers, linear work."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import InputError
from gateway.flightsql import like
from gateway.flightsql.like import check_length, compile_like, like_match


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        (None, "anything", True),
        ("%", "", True),
        ("%", "abc", True),
        ("a%", "abc", True),
        ("a%", "bac", False),
        ("_bc", "abc", True),
        ("_bc", "aabc", False),
        ("a_c", "a.c", True),
        ("a.c", "abc", False),  # regex characters are literal
        ("a\\_c", "a_c", True),
        ("a\\_c", "abc", False),
        ("100\\%", "100%", True),
        ("Main", "main", False),  # case-sensitive
        ("m%n", "m\nn", True),
        ("a%b%a", "aba", True),  # the ends may not overlap...
        ("ab%ba", "aba", False),  # ...and here they would have to
        ("%a_a%", "xxaya", True),
        ("%\\\\%", "a\\b", True),  # an escaped escape is a literal backslash
        ("\\a", "a", True),  # an escape before an ordinary character: the character
    ],
)
def test_like_match(pattern: str | None, value: str, expected: bool) -> None:
    assert like_match(pattern, value) is expected


# ---------------------------------------------------------------- the same answers as DuckDB

_DUCKDB = duckdb.connect()
_PATTERN_CHARS = st.sampled_from(["a", "b", "%", "_", "\\", "é", "\n", "."])
_VALUE_CHARS = st.sampled_from(["a", "b", "%", "_", "\\", "é", "\n", "."])


def duckdb_like(value: str, pattern: str) -> bool | None:
    """DuckDB's ``value LIKE pattern ESCAPE '\\'``; None when DuckDB refuses the pattern."""
    try:
        row = _DUCKDB.execute("SELECT ? LIKE ? ESCAPE '\\'", [value, pattern]).fetchone()
    except duckdb.Error:
        return None
    assert row is not None
    return bool(row[0])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.text(_PATTERN_CHARS, max_size=12), value=st.text(_VALUE_CHARS, max_size=12))
def test_matches_like_duckdb(pattern: str, value: str) -> None:
    expected = duckdb_like(value, pattern)
    if ends_with_lone_escape(pattern):
        # Refused whatever the name: DuckDB refuses it once its matcher gets there (else
        # the name did not match before), and a catalog call's errors must not depend on
        # which names exist.
        with pytest.raises(InputError, match="ends with the escape character"):
            like_match(pattern, value)
        assert expected is not True
    else:
        assert like_match(pattern, value) is expected, (pattern, value)


def ends_with_lone_escape(pattern: str) -> bool:
    escaped = False
    for ch in pattern:
        escaped = not escaped and ch == "\\"
    return escaped


@settings(max_examples=300, deadline=None)
@given(value=st.text(_VALUE_CHARS, max_size=12), data=st.data())
def test_matches_like_duckdb_on_patterns_drawn_from_the_value(value: str,
                                                               data: st.DataObject) -> None:
    # Random patterns rarely match; these are made from the value, so they often do.
    pattern = "".join(
        data.draw(st.sampled_from([ch if ch not in "%_\\" else "\\" + ch, "_", "%", ""]))
        for ch in value)
    assert like_match(pattern, value) is duckdb_like(value, pattern), (pattern, value)


# ---------------------------------------------------------------- the work is bounded


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the matcher's piece comparisons (each at most one piece long)."""
    counter = [0]
    fits, find = like._fits, like._Piece.find

    def counted_fits(piece: like._Piece, value: str, at: int) -> bool:
        counter[0] += 1
        return fits(piece, value, at)

    def counted_find(piece: like._Piece, value: str, start: int, stop: int) -> int:
        counter[0] += max(1, stop - start)  # a scan: one comparison per place tried
        return find(piece, value, start, stop)

    monkeypatch.setattr(like, "_fits", counted_fits)
    monkeypatch.setattr(like._Piece, "find", counted_find)
    yield counter


def test_thousands_of_percent_are_one_gap(steps: list[int]) -> None:
    # 36 % took a backtracking regex 4 s, 200 never finished: here they are one gap.
    pattern = compile_like("%" * 5000 + "zz")
    assert pattern.parts == ("", "zz")
    names = ["patients", "screenings", "x" * 60, "a" * 200 + "z"]
    assert [pattern.matches(n) for n in names] == [False, False, False, False]
    assert steps[0] <= 2 * len(names)  # the first and the last piece, once per name


def test_work_is_at_most_pattern_times_name(steps: list[int]) -> None:
    # The worst case for a backtracking matcher: many gaps, and no match at the end.
    text = "%a" * 120 + "%b"
    pattern = compile_like(text)
    name = "a" * 200
    assert not pattern.matches(name)
    assert steps[0] <= len(text) * len(name)
    steps[0] = 0
    assert not compile_like("_" * 250).matches(name)  # too short: refused before any step
    assert steps[0] == 0


def test_a_long_pattern_is_refused_with_the_setting_named() -> None:
    check_length("%" * 256, 256, "table name")
    with pytest.raises(InputError, match=r"257 characters long; this server accepts at most 256 "
                                         r"\(setting max_pattern_length\)"):
        check_length("%" * 257, 256, "table name")


def test_the_limit_is_documented() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    assert "--max-pattern-length" in (docs / "operations.md").read_text()
    assert "max_pattern_length" in (docs / "network.md").read_text()
