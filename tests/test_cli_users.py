"""`stockade users …`: in-process through a small argparse root, and one real process."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gateway.cli_users import add_users_parser, parse_attribute
from gateway.errors import InputError, PolicyError
from gateway.state import StateStore

ROOT = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="stockade")
    add_users_parser(root.add_subparsers(dest="command", required=True))
    return root


class Stdin(io.StringIO):
    def __init__(self, text: str = "", *, tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def run(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    stdin: str = "",
    tty: bool = False,
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", Stdin(stdin, tty=tty))
    args = parser().parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_DATA_DIR", raising=False)


@pytest.fixture
def data(tmp_path: Path) -> str:
    return str(tmp_path / "data")


def add(data: str, mp: pytest.MonkeyPatch, cap: pytest.CaptureFixture[str], *extra: str) -> Any:
    return run(
        [
            "users",
            "add",
            "alice",
            "--role",
            "analyst",
            "--password-stdin",
            "--data-dir",
            data,
            *extra,
        ],
        mp,
        cap,
        stdin="password-1\n",
    )


def test_add_and_list(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    code, out, err = add(data, monkeypatch, capsys, "--attr", "site=north", "--attr", "level=3")
    # A store no gateway has opened yet does not know the domain's name: the only
    # output on stderr is the note that network logins need one direct login first.
    assert code == 0 and err == (
        "note: this domain's gateway has not started yet, so 'alice' can log in through a "
        "network only after one direct login (the state store learns the domain's name when "
        "its gateway starts).\n")
    assert out == "Added user 'alice' with role 'analyst'.\n"
    with StateStore(data) as store:
        user = store.authenticate("alice", "password-1")  # newline stripped
    assert dict(user.attributes) == {"site": "north", "level": 3}

    code, out, _ = run(["users", "list", "--data-dir", data], monkeypatch, capsys)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ROLE", "STATUS", "ATTRIBUTES", "CREATED"]
    assert row.startswith("alice") and "analyst" in row and 'level=3, site="north"' in row

    code, out, _ = run(
        ["users", "list", "--data-dir", data, "--format", "json"], monkeypatch, capsys
    )
    (listed,) = json.loads(out)
    assert listed["name"] == "alice" and listed["attributes"] == {"level": 3, "site": "north"}
    assert listed["disabled"] is False and "password" not in json.dumps(listed)


def test_list_empty(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    StateStore(data).close()
    code, out, _ = run(["users", "list", "--data-dir", data], monkeypatch, capsys)
    assert code == 0 and out.startswith("No users yet.")


def test_data_dir_from_environment(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("STOCKADE_DATA_DIR", data)
    code, _, _ = run(
        ["users", "add", "bob", "--role", "analyst", "--password-stdin"],
        monkeypatch,
        capsys,
        stdin="password-2\n",
    )
    assert code == 0
    assert (Path(data) / "state.db").is_file()


def test_missing_data_dir(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    code, out, err = run(["users", "list"], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: No data directory: pass --data-dir DIR or set STOCKADE_DATA_DIR")


def test_list_refuses_a_directory_without_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, _, err = run(["users", "list", "--data-dir", str(tmp_path / "typo")], monkeypatch, capsys)
    assert code == 2 and "state.db is missing" in err
    assert not (tmp_path / "typo").exists()


def test_duplicate_and_bad_input(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    add(data, monkeypatch, capsys)
    code, _, err = add(data, monkeypatch, capsys)
    assert (code, err) == (2, "error: User 'alice' already exists.\n")
    code, _, err = run(
        ["users", "add", "bob", "--role", "analyst", "--password-stdin", "--data-dir", data],
        monkeypatch,
        capsys,
        stdin="short\n",
    )
    assert (code, err) == (2, "error: Passwords must be at least 8 characters long.\n")
    code, _, err = add(data, monkeypatch, capsys, "--attr", "nokey")
    assert code == 2 and "must look like KEY=VALUE" in err
    code, _, err = add(data, monkeypatch, capsys, "--attr", "a=1", "--attr", "a=2")
    assert (code, err) == (2, "error: --attr a is given twice.\n")


def test_empty_stdin(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    code, _, err = run(
        ["users", "add", "bob", "--role", "analyst", "--password-stdin", "--data-dir", data],
        monkeypatch,
        capsys,
        stdin="",
    )
    assert code == 2 and "standard input is empty" in err


def test_no_password_without_terminal(
    data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, _, err = run(
        ["users", "add", "bob", "--role", "analyst", "--data-dir", data], monkeypatch, capsys
    )
    assert code == 2 and "pass --password-stdin" in err


def test_prompt_twice(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    answers = iter(["typed-password", "typed-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    code, _, _ = run(
        ["users", "add", "bob", "--role", "analyst", "--data-dir", data],
        monkeypatch,
        capsys,
        tty=True,
    )
    assert code == 0
    with StateStore(data) as store:
        assert store.authenticate("bob", "typed-password").name == "bob"


def test_prompt_mismatch(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    answers = iter(["typed-password", "typo-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    code, _, err = run(
        ["users", "add", "bob", "--role", "analyst", "--data-dir", data],
        monkeypatch,
        capsys,
        tty=True,
    )
    assert (code, err) == (2, "error: The two passwords differ; nothing was changed.\n")
    with StateStore(data) as store:
        assert store.list_users() == []


def test_prompt_cancelled(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def cancel(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("getpass.getpass", cancel)
    code, _, err = run(
        ["users", "add", "bob", "--role", "analyst", "--data-dir", data],
        monkeypatch,
        capsys,
        tty=True,
    )
    assert (code, err) == (2, "error: Cancelled; nothing was changed.\n")


def test_passwd(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    add(data, monkeypatch, capsys)
    with StateStore(data) as store:
        token = store.issue_token("alice", 60)
    code, out, _ = run(
        ["users", "passwd", "ALICE", "--password-stdin", "--data-dir", data],
        monkeypatch,
        capsys,
        stdin="password-new\r\n",
    )
    assert code == 0 and out == "Changed the password of 'alice'; their sessions are ended.\n"
    with StateStore(data) as store:
        assert store.authenticate("alice", "password-new").name == "alice"
        with pytest.raises(Exception, match="expired or is not valid"):
            store.user_for_token(token)


def test_passwd_unknown_user_fails_before_prompting(
    data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    add(data, monkeypatch, capsys)
    code, _, err = run(
        ["users", "passwd", "alcie", "--data-dir", data], monkeypatch, capsys, tty=True
    )
    assert code == 2
    assert err.startswith("error: Unknown user 'alcie'. Did you mean 'alice'?")


def test_remove(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    add(data, monkeypatch, capsys)
    code, out, _ = run(["users", "remove", "alice", "--data-dir", data], monkeypatch, capsys)
    assert code == 0 and out.startswith("Removed user 'alice'")
    code, _, err = run(["users", "remove", "alice", "--data-dir", data], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: Unknown user 'alice'.")


# ---------------------------------------------------------------- --policy


def fake_loader(monkeypatch: pytest.MonkeyPatch, roles: list[str] | Exception) -> list[str]:
    seen: list[str] = []

    def load_policy(path: Any) -> Any:
        seen.append(str(path))
        if isinstance(roles, Exception):
            raise roles
        return types.SimpleNamespace(roles={r: object() for r in roles})

    module = types.ModuleType("policy.loader")
    module.load_policy = load_policy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "policy.loader", module)
    return seen


def test_role_checked_against_policy(
    data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    seen = fake_loader(monkeypatch, ["analyst", "auditor", "owner"])
    code, _, err = run(
        ["users", "add", "bob", "--role", "analist", "--password-stdin"]
        + ["--data-dir", data, "--policy", "policy.yaml"],
        monkeypatch,
        capsys,
        stdin="password-1\n",
    )
    assert (code, err) == (2, "error: Unknown role 'analist'. Did you mean 'analyst'?\n")
    assert seen == ["policy.yaml"]
    code, _, err = run(
        ["users", "add", "bob", "--role", "zzz", "--password-stdin"]
        + ["--data-dir", data, "--policy", "policy.yaml"],
        monkeypatch,
        capsys,
        stdin="password-1\n",
    )
    assert err == (
        "error: Unknown role 'zzz'. The roles in policy.yaml are: analyst, auditor, owner.\n"
    )
    code, _, _ = run(
        ["users", "add", "bob", "--role", "analyst", "--password-stdin"]
        + ["--data-dir", data, "--policy", "policy.yaml"],
        monkeypatch,
        capsys,
        stdin="password-1\n",
    )
    assert code == 0


def test_bad_policy_file(data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    fake_loader(monkeypatch, PolicyError("unknown key 'rolez'", file="p.yaml", line=3))
    code, _, err = add(data, monkeypatch, capsys, "--policy", "p.yaml")
    assert (code, err) == (2, "error: p.yaml:3: unknown key 'rolez'\n")


def test_role_checked_against_a_real_policy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    pytest.importorskip("policy.loader")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ndomain: {name: d}\ndatasets: {}\n"
        "roles:\n  analyst: {}\n  owner: {admin: true}\n"
    )
    argv = ["users", "add", "bob", "--password-stdin", "--data-dir", str(tmp_path / "data")]
    code, _, err = run(
        [*argv, "--role", "analist", "--policy", str(policy)],
        monkeypatch,
        capsys,
        stdin="pw-12345\n",
    )
    assert (code, err) == (2, "error: Unknown role 'analist'. Did you mean 'analyst'?\n")
    code, _, _ = run(
        [*argv, "--role", "analyst", "--policy", str(policy)],
        monkeypatch,
        capsys,
        stdin="pw-12345\n",
    )
    assert code == 0


# ---------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site=north", ("site", "north")),
        ("level=3", ("level", 3)),
        ("level=-3", ("level", -3)),
        ("zip=02134", ("zip", "02134")),
        ("ratio=0.25", ("ratio", 0.25)),
        ("big=1e3", ("big", 1000.0)),
        ("on=TRUE", ("on", True)),
        ("off=false", ("off", False)),
        ('code="7"', ("code", "7")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
        ("nan=nan", ("nan", "nan")),
    ],
)
def test_parse_attribute(text: str, expected: tuple[str, Any]) -> None:
    assert parse_attribute(text) == expected


def test_parse_attribute_needs_a_key() -> None:
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_attribute("=x")


# ---------------------------------------------------------------- a real process


def test_in_a_real_process(tmp_path: Path) -> None:
    script = (
        "import argparse, sys\n"
        "from gateway.cli_users import add_users_parser\n"
        "root = argparse.ArgumentParser(prog='stockade')\n"
        "add_users_parser(root.add_subparsers(dest='command', required=True))\n"
        "args = root.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    data = str(tmp_path / "d")

    def stockade(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    done = stockade("users", "add", "eve", "--role", "analyst", "--password-stdin",
                    "--data-dir", data, stdin="password-9\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = stockade("users", "list", "--format", "json", "--data-dir", data)
    assert [u["name"] for u in json.loads(done.stdout)] == ["eve"]
    done = stockade("users", "add", "eve", "--role", "analyst", "--data-dir", data)
    assert done.returncode == 2
    assert done.stderr.startswith("error: No password given")
    assert "Traceback" not in done.stderr
    done = stockade("users", "remove", "nobody", "--data-dir", data)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_a_user_added_before_the_gateway_started_is_told_about_network_logins(
        data: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from gateway.network_keys import derive

    code, _, err = run(["users", "add", "bob", "--role", "analyst", "--password-stdin",
                        "--data-dir", data], monkeypatch, capsys, stdin="password-2\n")
    assert code == 0 and "can log in through a network only after one direct login" in err
    with StateStore(data) as store:
        store.set_domain_name("st_marys")  # the gateway starts
    code, _, err = run(["users", "passwd", "bob", "--password-stdin", "--data-dir", data],
                       monkeypatch, capsys, stdin="password-3\n")
    assert code == 0 and err == ""
    with StateStore(data) as store:
        assert store.authenticate("bob", derive("password-3", "st_marys")).name == "bob"
