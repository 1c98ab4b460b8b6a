"""``stockade search TERM --network URL``: find datasets across the domains of a network.

Logs in to the network node as ``--user`` (else ``$STOCKADE_USER``); the password
comes from one line of standard input with ``--password-stdin``, else
``$STOCKADE_PASSWORD``, else a prompt (see :mod:`gateway.cli_remote`). The
network asks each domain with these credentials, so the results are what each
domain lets this user see (:mod:`network.search`). Domains that could not be
searched are named on standard error; if none could, the exit code is 2.

>>> print(format_results([{"domain": "st_marys", "dataset": "oncology", "mode": "dp",
...     "description": "Screenings", "tags": ["cancer"], "matched": ["tag"],
...     "tables": [{"table": "screenings", "columns": [{"name": "age"}, {"name": "site"}]}]}]))
st_marys.oncology  (dp; matched: tag)
  Screenings  [tags: cancer]
  screenings  age, site
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.cli_remote import PASSWORD_ENV, USER_ENV, connect, print_json
from gateway.errors import UnavailableError

SEARCH_ACTION = "stockade.search"


def add_search_parser(sub: Any) -> None:
    """Add ``stockade search`` to the CLI's subcommands."""
    parser = sub.add_parser(
        "search", help="find datasets across a network's domains",
        description="Search the datasets of every domain of a network by name, description, "
                    "tags and column names (case-insensitive; every word must match). "
                    "Metadata only, as each domain lets you see it.")
    parser.add_argument("term", metavar="TERM", help="what to look for, e.g. cancer or "
                                                     "tumor_size")
    parser.add_argument("--network", dest="url", metavar="URL", required=True,
                        help="the network node, grpc://HOST:PORT or grpc+tls://HOST:PORT")
    parser.add_argument("--user", "--login", dest="login_user", metavar="NAME",
                        help=f"log in as NAME (default: ${USER_ENV}, else owner)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="PEM file of the CA to trust for a grpc+tls:// network")
    parser.add_argument("--password-stdin", dest="login_password_stdin", action="store_true",
                        help=f"read the password from one line of standard input "
                             f"(else ${PASSWORD_ENV}, else a prompt)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=run_search, login_flags="--user/--login")


def run_search(args: argparse.Namespace) -> int:
    with connect(args) as client:
        answer = client.action(SEARCH_ACTION, {"term": args.term})
    results: list[dict[str, Any]] = answer.get("results", [])
    domains: Mapping[str, str] = answer.get("domains", {})
    if args.format == "json":
        print_json(answer)
    elif results:
        print(format_results(results))
        print("\nQuery a table as DOMAIN.DATASET.TABLE, or across domains as "
              "federated.DATASET.TABLE.")
    else:
        print(f"No dataset matches '{args.term}'.")
    failed = {name: status for name, status in domains.items() if status != "ok"}
    for name, status in failed.items():
        print(f"warning: domain '{name}' was not searched: {status}", file=sys.stderr)
    if domains and len(failed) == len(domains):
        raise UnavailableError("No domain of the network could be searched (see above).")
    return 0


def format_results(results: Sequence[Mapping[str, Any]]) -> str:
    """The results for people: one block per dataset, one line per table."""
    blocks = []
    for r in results:
        lines = [f"{r['domain']}.{r['dataset']}  ({r.get('mode')}; matched: "
                 f"{', '.join(r.get('matched') or ())})"]
        about = r.get("description") or ""
        if r.get("tags"):
            about = f"{about}  [tags: {', '.join(r['tags'])}]".strip()
        if about:
            lines.append(f"  {about}")
        tables = r.get("tables") or ()
        width = max((len(str(t["table"])) for t in tables), default=0)
        for t in tables:
            columns = ", ".join(str(c["name"]) for c in t.get("columns") or ())
            lines.append(f"  {str(t['table']).ljust(width)}  {columns}".rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
