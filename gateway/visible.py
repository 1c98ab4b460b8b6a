"""Dataset names in what an analyst sends: the one rule of every analyst action.

A dataset the caller's role may not read does not exist for them anywhere
(security invariant 5), actions included. So every analyst action that takes a
dataset name resolves it with :func:`seen_dataset`, and

- a name the caller cannot see gets the same answer whether a dataset of that
  name exists (denied to them) or not: :class:`SeenDataset` does not say which;
- "did you mean" suggestions come only from the datasets the caller can see
  (:func:`hint`);
- an analyst may still ask for access to a name they cannot see
  (``stockade.request_access`` files it as written, whatever it names), since
  owners may announce datasets elsewhere; the owner, not the analyst, sees
  whether it is in the policy.

>>> from policy.loader import parse_policy
>>> from policy.principal import Principal
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   oncology: {tables: {t: {source: {format: csv, path: t.csv}}}}
...   vault: {tables: {t: {source: {format: csv, path: t.csv}}}}
... roles:
...   analyst: {datasets: {oncology: {mode: raw}}}
... ''', base_dir="/")
>>> ann = Principal("ann", "analyst")
>>> seen_dataset(policy, ann, "oncology"), seen_dataset(policy, ann, "vault")
(SeenDataset(name='oncology', mode='raw'), SeenDataset(name='vault', mode=None))
>>> hint("vaultt", policy, ann), hint("oncolgy", policy, ann)
('', " Did you mean 'oncology'?")
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import did_you_mean
from policy.access import catalog_for
from policy.model import Policy
from policy.principal import Principal


@dataclass(frozen=True)
class SeenDataset:
    """A dataset name as the caller sees it: ``mode`` is theirs, or None when they see
    no dataset of that name (it is denied to them, or there is none: the same)."""

    name: str
    mode: str | None


def seen_modes(policy: Policy, principal: Principal) -> dict[str, str]:
    """Dataset → the caller's mode, for the datasets they can see (the first table's
    mode, as grants are per dataset)."""
    out: dict[str, str] = {}
    for (dataset, _table), access in sorted(catalog_for(policy, principal).items()):
        out.setdefault(dataset, access.mode)
    return out


def seen_dataset(policy: Policy, principal: Principal, name: str) -> SeenDataset:
    """``name`` as the caller sees it."""
    return SeenDataset(name, seen_modes(policy, principal).get(name))


def hint(name: str, policy: Policy, principal: Principal, *, mode: str | None = None) -> str:
    """`` Did you mean 'x'?`` among the datasets the caller sees (in ``mode``, if given)."""
    modes = seen_modes(policy, principal)
    return did_you_mean(name, [d for d, m in modes.items() if mode is None or m == mode])


def no_budget_message(seen: SeenDataset, policy: Policy, principal: Principal) -> str:
    """Why a budget request for a dataset the caller does not read in ``dp`` mode is refused.

    For a name the caller cannot see, the message depends on the name and on what
    the caller sees only.
    """
    if seen.mode is None:
        return (f"Field 'dataset': you read no dataset '{seen.name}' in dp mode, so it has no "
                f"budget.{hint(seen.name, policy, principal, mode='dp')} To ask for access to "
                "a dataset, use stockade.request_access.")
    return (f"Field 'dataset': you read '{seen.name}' in {seen.mode} mode, which has no "
            "budget (budgets are for dp mode); to ask for dp access, use "
            "stockade.request_access.")
