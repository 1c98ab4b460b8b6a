"""policies.example.yaml documents every field of the policy model."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from policy import model
from policy.loader import load_policy

ROOT = Path(__file__).parent.parent
EXAMPLE = (ROOT / "policies.example.yaml").read_text()
DOCS = (ROOT / "docs" / "policy.md").read_text()

# Model fields that are not YAML keys: names are the mapping keys, ``file`` is
# where the policy was read from and ``lines`` where each key is in it.
NOT_KEYS = {"name", "file", "lines"}


def model_fields() -> list[tuple[str, str]]:
    out = []
    for cls in (
        model.Policy, model.Domain, model.Limits, model.LimitsOverride, model.Source,
        model.ColumnPolicy, model.Table, model.Dataset, model.Budget, model.TableGrant,
        model.DatasetGrant, model.Role, model.Functions, model.EngineSpec,
    ):  # fmt: skip
        for f in dataclasses.fields(cls):
            if f.name not in NOT_KEYS:
                out.append((cls.__name__, f.name))
    return out


@pytest.mark.parametrize("cls,field", model_fields())
def test_field_is_in_the_example(cls: str, field: str) -> None:
    assert re.search(rf"(^|[\s{{,]){re.escape(field)}:", EXAMPLE, re.MULTILINE), (
        f"{cls}.{field} is missing from policies.example.yaml"
    )


@pytest.mark.parametrize("cls,field", model_fields())
def test_field_is_documented(cls: str, field: str) -> None:
    assert f"`{field}`" in DOCS, f"{cls}.{field} is missing from docs/policy.md"


def test_every_mode_and_format_is_in_the_example() -> None:
    for name in (*model.MODES, *model.FORMATS):
        assert name in EXAMPLE


def test_example_loads() -> None:
    load_policy(ROOT / "policies.example.yaml")


def test_model_is_frozen() -> None:
    limits = model.Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_rows = 3  # type: ignore[misc]
    assert typing.get_type_hints(model.Limits)["max_rows"] is int
