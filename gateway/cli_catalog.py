"""The analyst's own view: ``catalog``, ``budget mine``, ``requests mine|budget|access``.

Each logs in to ``--url`` as the analyst (:mod:`gateway.cli_remote`) and shows
only what that login may see. Against a domain they run its analyst actions
(``stockade.catalog``, ``stockade.budget``, ``stockade.my_requests``,
``stockade.request_budget``, ``stockade.request_access``; ``docs/api.md``).
A network node has no catalog or budgets of its own: ``catalog`` then lists what
the network's Flight SQL metadata shows (every domain's tables and the
``federated`` ones), and ``budget mine`` asks each of the network's domains with
the same login. Errors are one ``error:`` line and exit code 2.

>>> print(format_catalog([{"dataset": "oncology", "mode": "dp", "description": "Screenings",
...     "tags": ["cancer"], "tables": [{"table": "screenings", "mode": "dp",
...     "columns": [{"name": "site", "type": "string"}, {"name": "age", "type": "int32"}]}]}]))
oncology  (dp)  Screenings  [tags: cancer]
  screenings  site string, age int32
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.cli_budget import _NEGATIVE, _left, _num, parse_amount
from gateway.cli_query import credentials, driver_errors, open_sql
from gateway.cli_remote import add_remote_options, connect, format_table, print_json
from gateway.errors import InputError, StockadeError, UnavailableError
from gateway.remote import GatewayClient

NETWORK_STATUS = "stockade.network.status"
MODES = ("raw", "aggregate", "dp")


def _unknown_action(exc: StockadeError, name: str) -> bool:
    """Whether ``exc`` says the server has no action ``name`` (a network node)."""
    return isinstance(exc, InputError) and exc.message.startswith(f"Unknown action '{name}'")


def _domain_action(client: GatewayClient, name: str, body: Mapping[str, Any] | None = None
                   ) -> Any:
    """Run a domain's action; a network node (which has none) is named as such."""
    try:
        return client.action(name, body)
    except StockadeError as exc:
        if _unknown_action(exc, name):
            raise InputError(f"{client.url} is a network node: requests go to a domain. Use "
                             "the domain's URL (`stockade network status --url "
                             f"{client.url}` lists them).") from None
        raise


# -- catalog -------------------------------------------------------------------------------

def format_catalog(datasets: Sequence[Mapping[str, Any]]) -> str:
    """One block per dataset: its mode and description, then one line per table."""
    blocks = []
    for d in datasets:
        name = f"{d['catalog']}.{d['dataset']}" if d.get("catalog") else str(d["dataset"])
        head = name + (f"  ({d['mode']})" if d.get("mode") else "")
        about = str(d.get("description") or "")
        if d.get("tags"):
            about = f"{about}  [tags: {', '.join(d['tags'])}]".strip()
        lines = [f"{head}  {about}".rstrip()]
        tables = d.get("tables") or ()
        width = max((len(str(t["table"])) for t in tables), default=0)
        for t in tables:
            mode = f" ({t['mode']})" if t.get("mode") and t.get("mode") != d.get("mode") else ""
            columns = ", ".join(f"{c['name']} {c['type']}".rstrip()
                                for c in t.get("columns") or ())
            lines.append(f"  {(str(t['table']) + mode).ljust(width)}  {columns}".rstrip())
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def network_catalog(args: argparse.Namespace, user: str, password: str) -> list[dict[str, Any]]:
    """What the Flight SQL metadata of ``args.url`` lists, as catalog entries."""
    conn = open_sql(args, user, password)
    try:
        with driver_errors(str(args.url)):
            objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    finally:
        conn.close()
    out = []
    for catalog in sorted(objects, key=lambda c: str(c["catalog_name"])):
        for schema in catalog["catalog_db_schemas"] or ():
            tables = [{"table": t["table_name"],
                       "columns": [{"name": c["column_name"],
                                    "type": str(c.get("xdbc_type_name") or "").lower()}
                                   for c in t["table_columns"] or ()]}
                      for t in sorted(schema["db_schema_tables"] or (),
                                      key=lambda t: str(t["table_name"]))]
            out.append({"catalog": catalog["catalog_name"], "dataset": schema["db_schema_name"],
                        "tables": tables})
    return out


def cmd_catalog(args: argparse.Namespace) -> int:
    """``catalog --url URL [--format table|json]``."""
    user, password = credentials(args)
    with _client(args, user, password) as client:
        try:
            datasets = list(client.action("stockade.catalog"))
        except StockadeError as exc:
            if not _unknown_action(exc, "stockade.catalog"):
                raise
            datasets = network_catalog(args, user, password)
    if args.format == "json":
        print_json(datasets)
    elif datasets:
        print(format_catalog(datasets))
    else:
        print(f"'{user}' may read no dataset at {args.url}.")
    return 0


def _tls(args: argparse.Namespace) -> bytes | None:
    from gateway.cli_remote import _tls_ca

    return _tls_ca(args)


def _client(args: argparse.Namespace, user: str, password: str) -> GatewayClient:
    """Log in to ``args.url`` for its actions (hinting at --tls-ca when TLS fails)."""
    url = str(args.url)
    try:
        return GatewayClient(url, user, password, tls_root_certs=_tls(args))
    except UnavailableError as exc:
        if url.startswith("grpc+tls://") and not args.tls_ca:
            raise UnavailableError(f"{exc.message.rstrip('.')}. If it is, and its certificate "
                                   "is signed by a private CA, pass that CA with --tls-ca "
                                   "FILE.") from None
        raise


def add_catalog_parser(sub: Any) -> None:
    """Add ``stockade catalog`` to the CLI's subcommands."""
    parser = sub.add_parser(
        "catalog", help="the datasets, tables and columns you may query",
        description="List the datasets you may query at a domain (with your mode on each, "
                    "descriptions, tables and their columns as you see them: hidden columns "
                    "are absent, masked ones have the mask's type), or at a network node "
                    "every domain's tables and the federated ones.")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    add_remote_options(parser, required=True)
    parser.set_defaults(func=cmd_catalog)


# -- budget mine ---------------------------------------------------------------------------

_BUDGET_HEADER = ("DATASET", "ε ALLOWANCE", "ε SPENT", "ε LEFT", "δ ALLOWANCE", "δ SPENT",
                  "δ LEFT", "NOTE")


def _budget_row(b: Mapping[str, Any]) -> tuple[str, ...]:
    own = _left(b["epsilon_allowance"], b["epsilon_spent"])
    own_delta = _left(b["delta_allowance"], b["delta_spent"])
    capped = b["epsilon_remaining"] < own or b["delta_remaining"] < own_delta
    return (str(b["dataset"]), _num(b["epsilon_allowance"]), _num(b["epsilon_spent"]),
            _num(b["epsilon_remaining"]), _num(b["delta_allowance"]), _num(b["delta_spent"]),
            _num(b["delta_remaining"]), "limited by the dataset cap" if capped else "")


def _network_budgets(args: argparse.Namespace, client: GatewayClient, user: str,
                     password: str) -> list[dict[str, Any]]:
    """The caller's budget at each domain of the network at ``args.url``."""
    status = client.action(NETWORK_STATUS)
    budgets = []
    for domain in status.get("domains") or ():
        name, url = domain["name"], domain["url"]
        tls = _tls(args) if str(url).startswith("grpc+tls://") else None
        try:
            with GatewayClient(url, user, password, tls_root_certs=tls) as there:
                entries = there.action("stockade.budget")
        except StockadeError as exc:
            print(f"warning: no budget from domain '{name}': {exc.message}", file=sys.stderr)
            continue
        budgets += [{"domain": name, **entry} for entry in entries]
    if not budgets and status.get("domains"):
        raise UnavailableError("No domain of the network gave a budget (see above).")
    return budgets


def cmd_budget_mine(args: argparse.Namespace) -> int:
    """``budget mine --url URL [--format table|json]``."""
    user, password = credentials(args)
    network = False
    with _client(args, user, password) as client:
        try:
            budgets = list(client.action("stockade.budget"))
        except StockadeError as exc:
            if not _unknown_action(exc, "stockade.budget"):
                raise
            network = True
            budgets = _network_budgets(args, client, user, password)
    if args.format == "json":
        print_json(budgets)
    elif budgets:
        if network:
            print(format_table(("DOMAIN", *_BUDGET_HEADER),
                               [(str(b["domain"]), *_budget_row(b)) for b in budgets]))
        else:
            print(format_table(_BUDGET_HEADER, [_budget_row(b) for b in budgets]))
    else:
        print(f"'{user}' reads no dataset in dp mode at {args.url}, so has no budget there.")
    return 0


def add_budget_mine(commands: Any) -> None:
    """Add ``budget mine`` to the ``budget`` command's subcommands."""
    mine = commands.add_parser(
        "mine", help="your own ε/δ budgets (analysts; --url)",
        description="Your allowance, spent and remaining ε/δ per dataset you read in dp mode, "
                    "at a domain or, through a network node, at each of its domains.")
    mine.add_argument("--format", choices=("table", "json"), default="table")
    add_remote_options(mine, required=True)
    mine.set_defaults(func=cmd_budget_mine)


# -- requests mine | budget | access ---------------------------------------------------------

def _request_line(r: Mapping[str, Any]) -> tuple[str, ...]:
    from gateway.cli_requests import _amount, _day, _decision, _one_line

    return (str(r["id"]), r["status"], r["kind"], r["dataset"], _amount(r), _day(r["created_at"]),
            _one_line(r["reason"]), _one_line(_decision(r)))


def cmd_requests_mine(args: argparse.Namespace) -> int:
    """``requests mine --url URL``."""
    with connect(args) as client:
        requests = list(_domain_action(client, "stockade.my_requests"))
    if args.format == "json":
        print_json(requests)
    elif requests:
        print(format_table(("ID", "STATUS", "KIND", "DATASET", "ASKS", "FILED (UTC)", "REASON",
                            "DECISION"), [_request_line(r) for r in requests]))
    else:
        print("You have filed no requests.")
    return 0


def cmd_request_budget(args: argparse.Namespace) -> int:
    """``requests budget DATASET --epsilon E [--delta D] --reason TEXT --url URL``."""
    body: dict[str, Any] = {"dataset": args.dataset,
                            "epsilon": parse_amount(args.epsilon, "--epsilon"),
                            "reason": args.reason}
    if body["epsilon"] == 0:
        raise InputError("--epsilon must be above 0.")
    if args.delta is not None:
        body["delta"] = parse_amount(args.delta, "--delta", below_one=True)
    return _file(args, "stockade.request_budget", body)


def cmd_request_access(args: argparse.Namespace) -> int:
    """``requests access DATASET --mode M --reason TEXT --url URL``."""
    return _file(args, "stockade.request_access",
                 {"dataset": args.dataset, "mode": args.mode, "reason": args.reason})


def _file(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    with connect(args) as client:
        request = _domain_action(client, action, body)
    if args.format == "json":
        print_json(request)
    else:
        from gateway.cli_requests import _amount

        print(f"Filed request {request['id']} ({request['kind']}, {_amount(request)} on "
              f"'{request['dataset']}'); the owner decides. See it with `stockade requests "
              "mine`.")
    return 0


def add_analyst_requests(sub: Any) -> None:
    """Add ``mine``, ``budget`` and ``access`` to the ``requests`` command (added before)."""
    requests = sub.choices["requests"]
    (commands,) = [a for a in requests._actions if isinstance(a, argparse._SubParsersAction)]
    mine = commands.add_parser("mine", help="your own requests and their decisions (analysts)",
                               description="The requests you filed, oldest first, with the "
                                           "owner's decision once made.")
    mine.add_argument("--format", choices=("table", "json"), default="table")
    add_remote_options(mine, required=True)
    mine.set_defaults(func=cmd_requests_mine)

    budget = commands.add_parser(
        "budget", help="ask the owner for more ε/δ on a dataset (analysts)",
        description="Ask the owner of the domain for more budget on a dataset you read in dp "
                    "mode; approving it adds the ε/δ to your allowance.")
    budget._negative_number_matcher = _NEGATIVE
    budget.add_argument("dataset", metavar="DATASET")
    budget.add_argument("--epsilon", required=True, metavar="E", help="the ε you ask for")
    budget.add_argument("--delta", metavar="D", help="the δ you ask for (default 0)")
    budget.add_argument("--reason", required=True, metavar="TEXT",
                        help="what it is for (the owner reads it)")
    budget.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(budget, required=True)
    budget.set_defaults(func=cmd_request_budget)

    access = commands.add_parser(
        "access", help="ask the owner for a mode on a dataset (analysts)",
        description="Ask the owner of the domain to let you read a dataset in a mode.")
    access.add_argument("dataset", metavar="DATASET")
    access.add_argument("--mode", required=True, choices=MODES)
    access.add_argument("--reason", required=True, metavar="TEXT",
                        help="what it is for (the owner reads it)")
    access.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(access, required=True)
    access.set_defaults(func=cmd_request_access)
