"""The state store: users, passwords, tokens, migrations, concurrency, durability."""

from __future__ import annotations

import re
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway import passwords
from gateway.errors import AuthenticationError, ConfigError, InputError, NotFoundError
from gateway.network_keys import derive
from gateway.state import (
    INVALID_TOKEN,
    MIGRATIONS,
    NETWORK_REFUSED,
    SCHEMA_VERSION,
    UNNAMED_DOMAIN,
    WRONG_CREDENTIALS,
    WRONG_DOMAIN,
    LoginError,
    StateStore,
    User,
    ensure_admin,
)

# Cheap parameters keep the suite fast; the default hasher is tested on its own.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    with StateStore(tmp_path / "data", hasher=FAST, clock=clock) as s:
        yield s


# ---------------------------------------------------------------- passwords


def test_default_hasher_is_argon2id() -> None:
    h = passwords.hash_password("pass-word-1")
    assert h.startswith("$argon2id$")
    assert passwords.verify_password(h, "pass-word-1")
    assert not passwords.verify_password(h, "pass-word-2")
    assert not passwords.verify_password("not a hash", "pass-word-1")
    assert not passwords.needs_rehash(h)
    assert passwords.needs_rehash(FAST.hash("x"))


def test_tokens_and_one_time_passwords_are_random() -> None:
    tokens = {passwords.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 4 + 43 for t in tokens)  # 32 bytes urlsafe = 43 chars
    assert re.fullmatch(r"[0-9a-f]{64}", passwords.token_digest("t"))
    pw = {passwords.new_password() for _ in range(100)}
    assert len(pw) == 100 and all(len(p) == 20 for p in pw)


# ---------------------------------------------------------------- file and schema


def test_creates_directory_and_private_file(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b"
    with StateStore(data, hasher=FAST) as s:
        s.add_user("alice", "analyst", "password1")
        assert s.schema_version() == SCHEMA_VERSION
    db = data / "state.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for sidecar in data.glob("state.db-*"):
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600


def test_wal_and_migrations_recorded(store: StateStore) -> None:
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT version, description FROM schema_version").fetchall()
    finally:
        con.close()
    assert rows == [(v, d) for v, d, _ in MIGRATIONS]


def test_reopening_does_not_reapply_migrations(tmp_path: Path) -> None:
    StateStore(tmp_path, hasher=FAST).close()
    with StateStore(tmp_path, hasher=FAST) as s:
        assert s.schema_version() == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path, hasher=FAST).close()
    con = sqlite3.connect(tmp_path / "state.db")
    con.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    con.commit()
    con.close()
    with pytest.raises(ConfigError, match="newer Stockade"):
        StateStore(tmp_path, hasher=FAST)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a usable Stockade state store"):
        StateStore(tmp_path, hasher=FAST)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = StateStore(tmp_path, hasher=FAST)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.list_users()


# ---------------------------------------------------------------- users


def test_add_get_list(store: StateStore, clock: Clock) -> None:
    alice = store.add_user("alice", "clinician", "password1", {"site": "north", "level": 2})
    assert alice == User("alice", "clinician", {"site": "north", "level": 2})
    assert alice.created_at.timestamp() == clock.now
    store.add_user("bob", "analyst", "password2")
    assert store.get_user("alice") == alice
    assert store.get_user("ALICE").name == "alice"  # names are case-insensitive
    assert [u.name for u in store.list_users()] == ["alice", "bob"]
    assert store.get_user("bob").attributes == {}


def test_user_is_frozen_and_has_no_hash(store: StateStore) -> None:
    alice = store.add_user("alice", "analyst", "password1", {"site": "n"})
    with pytest.raises(AttributeError):
        alice.role = "owner"  # type: ignore[misc]
    with pytest.raises(TypeError):
        alice.attributes["site"] = "s"  # type: ignore[index]
    assert "argon2" not in repr(alice) and "password" not in repr(alice)
    assert alice.to_json()["attributes"] == {"site": "n"}


def test_duplicate_user(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    with pytest.raises(InputError, match=re.escape("User 'alice' already exists.")):
        store.add_user("Alice", "analyst", "password1")


@pytest.mark.parametrize("name", ["", "1alice", "al ice", "al:ice", "a" * 65, "ali'ce"])
def test_invalid_user_names(store: StateStore, name: str) -> None:
    with pytest.raises(InputError, match="Invalid user name"):
        store.add_user(name, "analyst", "password1")


def test_invalid_role_and_attributes(store: StateStore) -> None:
    with pytest.raises(InputError, match="Invalid role name"):
        store.add_user("alice", "ana lyst", "password1")
    with pytest.raises(InputError, match="Attribute 'site' must be a string"):
        store.add_user("alice", "analyst", "password1", {"site": ["a"]})  # type: ignore[dict-item]
    with pytest.raises(InputError, match="Invalid attribute name"):
        store.add_user("alice", "analyst", "password1", {"bad key": 1})
    with pytest.raises(InputError, match="finite"):
        store.add_user("alice", "analyst", "password1", {"x": float("nan")})
    assert store.list_users() == []


def test_password_policy(store: StateStore) -> None:
    with pytest.raises(InputError, match=re.escape("at least 8 characters")):
        store.add_user("alice", "analyst", "short")
    store.add_user("alice", "analyst", "12345678")
    with pytest.raises(InputError, match=re.escape("at least 8 characters")):
        store.set_password("alice", "1234567")


def test_get_user_did_you_mean(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    with pytest.raises(
        NotFoundError, match=re.escape("Unknown user 'alcie'. Did you mean 'alice'?")
    ):
        store.get_user("alcie")
    with pytest.raises(NotFoundError, match="Unknown user 'zed'"):
        store.set_role("zed", "owner")


def test_set_role_attributes_disabled(store: StateStore, clock: Clock) -> None:
    store.add_user("alice", "analyst", "password1", {"site": "n"})
    clock.now += 10
    u = store.set_role("alice", "auditor")
    assert u.role == "auditor" and u.updated_at.timestamp() == clock.now
    assert u.updated_at > u.created_at
    assert store.set_attributes("alice", {"site": "s", "ok": True}).attributes == {
        "site": "s",
        "ok": True,
    }
    assert store.set_disabled("alice", True).disabled
    assert store.get_user("alice").disabled
    assert not store.set_disabled("alice", False).disabled


def test_remove_user(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    token = store.issue_token("alice", 60)
    store.remove_user("alice")
    with pytest.raises(NotFoundError):
        store.get_user("alice")
    with pytest.raises(NotFoundError):
        store.remove_user("alice")
    with pytest.raises(AuthenticationError, match=re.escape(INVALID_TOKEN)):
        store.user_for_token(token)
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT COUNT(*) FROM tokens").fetchone() == (0,)
    con.close()


# ---------------------------------------------------------------- authentication


def test_authenticate(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    assert store.authenticate("alice", "password1").name == "alice"
    assert store.authenticate("ALICE", "password1").name == "alice"


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        ("alice", "wrong-password", "wrong_password"),
        ("nobody", "password1", "unknown_user"),
        ("not a name", "password1", "unknown_user"),
        ("carol", "password3", "disabled"),
    ],
)
def test_authenticate_failures_look_alike(
    store: StateStore, name: str, password: str, reason: str
) -> None:
    store.add_user("alice", "analyst", "password1")
    store.add_user("carol", "analyst", "password3")
    store.set_disabled("carol", True)
    with pytest.raises(LoginError) as info:
        store.authenticate(name, password)
    assert str(info.value) == WRONG_CREDENTIALS == "Wrong user name or password."
    assert info.value.reason == reason
    assert isinstance(info.value, AuthenticationError)


def test_set_password(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    token = store.issue_token("alice", 60)
    store.set_password("alice", "password2")
    with pytest.raises(LoginError):
        store.authenticate("alice", "password1")
    assert store.authenticate("alice", "password2").name == "alice"
    with pytest.raises(AuthenticationError):
        store.user_for_token(token)


def test_rehash_when_parameters_change(tmp_path: Path) -> None:
    with StateStore(tmp_path, hasher=FAST) as s:
        s.add_user("alice", "analyst", "password1")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    with StateStore(tmp_path, hasher=stronger) as s:
        s.authenticate("alice", "password1")
    con = sqlite3.connect(tmp_path / "state.db")
    (h,) = con.execute("SELECT password_hash FROM users").fetchone()
    con.close()
    assert "m=2048,t=2,p=1" in h
    with StateStore(tmp_path, hasher=stronger) as s:
        assert s.authenticate("alice", "password1").name == "alice"


# ---------------------------------------------------------------- credentials derived by networks


def _columns(store: StateStore, name: str) -> tuple[str | None, str | None]:
    con = sqlite3.connect(store.path)
    try:
        row = con.execute("SELECT network_verifier, network_realm FROM users WHERE name = ?",
                          (name,)).fetchone()
    finally:
        con.close()
    return row


def test_the_domain_name_is_recorded_once_and_replaced(store: StateStore) -> None:
    assert store.domain_name() is None
    assert store.set_domain_name("St_Marys") is None
    assert store.set_domain_name("st_marys") == "St_Marys"
    assert store.domain_name() == "st_marys"
    with pytest.raises(InputError):
        store.set_domain_name("")


def test_derived_credential_is_accepted_for_this_domain_only(store: StateStore) -> None:
    store.set_domain_name("St_Marys")
    store.add_user("alice", "analyst", "password1")
    verifier, realm = _columns(store, "alice")
    assert realm == "st_marys" and verifier is not None and verifier.startswith("$argon2id$")
    assert store.authenticate("alice", derive("password1", "st_marys")).name == "alice"
    assert store.authenticate("ALICE", derive("password1", "ST_MARYS")).name == "alice"
    assert store.authenticate("alice", "password1").name == "alice"  # the password still works
    # Derived for another domain: refused before anything is checked, not a LoginError
    # (so it does not count as a guess), naming the name the network used.
    with pytest.raises(AuthenticationError) as info:
        store.authenticate("alice", derive("password1", "city_general"))
    assert not isinstance(info.value, LoginError)
    assert str(info.value) == WRONG_DOMAIN.format(realm="city_general")
    with pytest.raises(AuthenticationError, match="not a credential a Stockade network"):
        store.authenticate("alice", "stockade-dk1:st_marys:short")


@pytest.mark.parametrize(("name", "password", "reason"), [
    ("alice", "wrong-password", "wrong_password"),
    ("nobody", "password1", "unknown_user"),
    ("carol", "password3", "disabled"),
    ("dave", "password4", "no_network_verifier"),
])
def test_derived_failures_look_alike_and_say_what_to_do(
    store: StateStore, name: str, password: str, reason: str
) -> None:
    store.add_user("dave", "analyst", "password4")  # before the domain's name was known
    store.set_domain_name("st_marys")
    store.add_user("alice", "analyst", "password1")
    store.add_user("carol", "analyst", "password3")
    store.set_disabled("carol", True)
    with pytest.raises(LoginError) as info:
        store.authenticate(name, derive(password, "st_marys"))
    assert info.value.reason == reason
    assert str(info.value) == NETWORK_REFUSED.format(domain="st_marys")
    assert "log in to it directly once, or ask its owner to reset your password" in str(
        info.value)


def test_a_store_without_a_domain_name_refuses_derived_credentials(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    assert _columns(store, "alice") == (None, None)
    with pytest.raises(AuthenticationError) as info:
        store.authenticate("alice", derive("password1", "st_marys"))
    assert str(info.value) == UNNAMED_DOMAIN and not isinstance(info.value, LoginError)
    store.authenticate("alice", "password1")  # a direct login cannot make one either
    assert _columns(store, "alice") == (None, None)


def test_derived_credential_is_never_checked_against_the_password_hash(
        store: StateStore) -> None:
    store.set_domain_name("st_marys")
    store.add_user("alice", "analyst", "password1")
    credential = derive("password1", "st_marys")
    con = sqlite3.connect(store.path)
    # A password hash that a derived credential would match, and no verifier; a
    # verifier that the plain password would match.
    con.execute("UPDATE users SET password_hash = ?, network_verifier = NULL",
                (FAST.hash(credential),))
    con.execute("INSERT INTO users (name, role, password_hash, created_at, updated_at,"
                " network_verifier, network_realm) VALUES ('bob', 'analyst', ?, 0, 0, ?,"
                " 'st_marys')", (FAST.hash("other-password"), FAST.hash("password2")))
    con.commit()
    con.close()
    with pytest.raises(LoginError) as info:
        store.authenticate("alice", credential)
    assert info.value.reason == "no_network_verifier"
    with pytest.raises(LoginError) as info:
        store.authenticate("bob", "password2")
    assert info.value.reason == "wrong_password"


def test_a_new_password_makes_a_new_verifier(store: StateStore) -> None:
    store.set_domain_name("st_marys")
    store.add_user("alice", "analyst", "password1")
    store.set_password("alice", "password2")
    with pytest.raises(LoginError):
        store.authenticate("alice", derive("password1", "st_marys"))
    assert store.authenticate("alice", derive("password2", "st_marys")).name == "alice"


def test_a_direct_login_gives_an_account_its_verifier(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")  # the domain's name is not known yet
    store.set_domain_name("st_marys")
    credential = derive("password1", "st_marys")
    with pytest.raises(LoginError, match="log in to it directly once"):
        store.authenticate("alice", credential)
    with pytest.raises(LoginError):
        store.authenticate("alice", "wrong-password")  # a failed login upgrades nothing
    assert _columns(store, "alice") == (None, None)
    store.authenticate("alice", "password1")
    assert store.authenticate("alice", credential).name == "alice"
    # The domain is renamed: the verifier was made for the old name, and is remade
    # for the new one at the next direct login.
    store.set_domain_name("st_marys_hospital")
    renamed = derive("password1", "st_marys_hospital")
    with pytest.raises(LoginError) as info:
        store.authenticate("alice", renamed)
    assert info.value.reason == "no_network_verifier"
    store.authenticate("alice", "password1")
    assert _columns(store, "alice")[1] == "st_marys_hospital"
    assert store.authenticate("alice", renamed).name == "alice"


def test_a_verifier_made_with_other_parameters_is_remade(tmp_path: Path) -> None:
    with StateStore(tmp_path, hasher=FAST) as s:
        s.set_domain_name("st_marys")
        s.add_user("alice", "analyst", "password1")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    with StateStore(tmp_path, hasher=stronger) as s:
        s.authenticate("alice", derive("password1", "st_marys"))
        assert "m=2048,t=2,p=1" in (_columns(s, "alice")[0] or "")
        assert s.authenticate("alice", derive("password1", "st_marys")).name == "alice"


def test_passwords_may_not_look_like_derived_credentials(store: StateStore) -> None:
    with pytest.raises(InputError, match="may not start with 'stockade-dk'"):
        store.add_user("alice", "analyst", "stockade-dk1:st_marys:abc")


def test_migration_to_derived_verifiers_keeps_every_account(tmp_path: Path) -> None:
    # A store written by the previous schema (version 6), with one user.
    con = sqlite3.connect(tmp_path / "state.db")
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                " description TEXT NOT NULL, applied_at REAL NOT NULL)")
    for version, description, statements in MIGRATIONS:
        if version > 6:
            break
        for statement in statements:
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (version, description))
    con.execute("INSERT INTO users (name, role, attributes, password_hash, disabled, created_at,"
                " updated_at) VALUES ('alice', 'analyst', '{}', ?, 0, 0, 0)",
                (FAST.hash("password1"),))
    con.commit()
    con.close()
    with StateStore(tmp_path, hasher=FAST) as s:
        assert s.schema_version() == SCHEMA_VERSION == 7
        assert _columns(s, "alice") == (None, None)
        assert s.domain_name() is None
        s.set_domain_name("st_marys")  # the gateway starts
        with pytest.raises(LoginError) as info:
            s.authenticate("alice", derive("password1", "st_marys"))
        assert info.value.reason == "no_network_verifier"
        assert s.authenticate("alice", "password1").name == "alice"
        assert s.authenticate("alice", derive("password1", "st_marys")).name == "alice"


# ---------------------------------------------------------------- tokens


def test_tokens(store: StateStore) -> None:
    alice = store.add_user("alice", "analyst", "password1")
    t1 = store.issue_token(alice, 60)
    t2 = store.issue_token("alice", 60)
    assert t1 != t2
    assert store.user_for_token(t1) == alice
    for bad in ["", "stk_nope", t1 + "x"]:
        with pytest.raises(AuthenticationError, match=re.escape(INVALID_TOKEN)):
            store.user_for_token(bad)
    store.revoke_token(t1)
    with pytest.raises(AuthenticationError):
        store.user_for_token(t1)
    assert store.user_for_token(t2) == alice
    assert store.revoke_tokens("alice") == 1
    with pytest.raises(AuthenticationError):
        store.user_for_token(t2)
    with pytest.raises(NotFoundError):
        store.issue_token("nobody", 60)
    with pytest.raises(InputError, match="positive"):
        store.issue_token(alice, 0)


def test_token_sees_current_role(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    token = store.issue_token("alice", 60)
    store.set_role("alice", "auditor")
    assert store.user_for_token(token).role == "auditor"


def test_disabled_user_loses_tokens(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    token = store.issue_token("alice", 60)
    store.set_disabled("alice", True)
    with pytest.raises(AuthenticationError):
        store.user_for_token(token)
    store.set_disabled("alice", False)
    with pytest.raises(AuthenticationError):  # re-enabling does not revive sessions
        store.user_for_token(token)


def test_token_expiry_and_purge(store: StateStore, clock: Clock) -> None:
    store.add_user("alice", "analyst", "password1")
    short = store.issue_token("alice", 0.5)
    long = store.issue_token("alice", 60)
    assert store.user_for_token(short).name == "alice"
    clock.now += 0.5
    with pytest.raises(AuthenticationError, match=re.escape(INVALID_TOKEN)):
        store.user_for_token(short)
    assert store.user_for_token(long).name == "alice"
    assert store.purge_expired_tokens() == 1
    assert store.purge_expired_tokens() == 0
    clock.now += 100
    store.issue_token("alice", 60)  # issuing purges expired tokens on the way
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT COUNT(*) FROM tokens").fetchone() == (1,)
    con.close()


def test_token_expiry_with_real_clock(tmp_path: Path) -> None:
    import time

    with StateStore(tmp_path, hasher=FAST) as s:
        s.add_user("alice", "analyst", "password1")
        token = s.issue_token("alice", 0.05)
        time.sleep(0.1)
        with pytest.raises(AuthenticationError):
            s.user_for_token(token)


def test_only_hashes_are_stored(tmp_path: Path) -> None:
    password = "Very-Secret-Password-42"
    with StateStore(tmp_path, hasher=FAST) as s:
        s.set_domain_name("st_marys")
        s.add_user("alice", "analyst", password)
        token = s.issue_token("alice", 60)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert password.encode() not in raw
    assert derive(password, "st_marys").rsplit(":", 1)[1].encode() not in raw
    assert token.encode() not in raw
    assert token[4:].encode() not in raw
    con = sqlite3.connect(tmp_path / "state.db")
    (h,) = con.execute("SELECT password_hash FROM users").fetchone()
    (digest,) = con.execute("SELECT digest FROM tokens").fetchone()
    con.close()
    assert h.startswith("$argon2id$")
    assert digest == passwords.token_digest(token)


# ---------------------------------------------------------------- durability and concurrency


def test_data_survives_reopening(tmp_path: Path) -> None:
    with StateStore(tmp_path, hasher=FAST) as s:
        s.add_user("alice", "clinician", "password1", {"site": "north"})
        token = s.issue_token("alice", 3600)
    with StateStore(tmp_path, hasher=FAST) as s:
        assert s.user_for_token(token).attributes == {"site": "north"}
        assert s.authenticate("alice", "password1").role == "clinician"


def test_data_survives_without_close(tmp_path: Path) -> None:
    # A store that is never closed (a crash) has still committed every change.
    s = StateStore(tmp_path, hasher=FAST)
    s.add_user("alice", "analyst", "password1")
    con = sqlite3.connect(tmp_path / "state.db")
    assert con.execute("SELECT name FROM users").fetchall() == [("alice",)]
    con.close()
    s.close()


def test_two_stores_on_one_file(tmp_path: Path) -> None:
    # The server and the `stockade users` command share the file.
    with StateStore(tmp_path, hasher=FAST) as server, StateStore(tmp_path, hasher=FAST) as cli:
        server.add_user("alice", "analyst", "password1")
        token = server.issue_token("alice", 60)
        cli.set_password("alice", "password2")
        with pytest.raises(AuthenticationError):
            server.user_for_token(token)


def test_eight_threads_issue_and_validate(store: StateStore) -> None:
    names = [f"user{i}" for i in range(8)]
    for name in names:
        store.add_user(name, "analyst", "password1")
    errors: list[BaseException] = []
    issued: dict[str, list[str]] = {n: [] for n in names}
    barrier = threading.Barrier(len(names))

    def work(name: str) -> None:
        try:
            barrier.wait()
            for _ in range(40):
                token = store.issue_token(name, 60)
                issued[name].append(token)
                assert store.user_for_token(token).name == name
            assert store.authenticate(name, "password1").name == name
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name in names:
        assert {store.user_for_token(t).name for t in issued[name]} == {name}
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT COUNT(*) FROM tokens").fetchone() == (8 * 40,)
    con.close()


# ---------------------------------------------------------------- first start


def test_ensure_admin_generates_one_time_password(store: StateStore) -> None:
    one_time = ensure_admin(store, role="owner", password=None)
    assert one_time is not None and len(one_time) >= 16
    assert store.authenticate("owner", one_time).role == "owner"
    assert ensure_admin(store, role="owner", password=None) is None
    assert [u.name for u in store.list_users()] == ["owner"]


def test_ensure_admin_with_given_password(store: StateStore) -> None:
    assert ensure_admin(store, role="admin", name="root", password="given-password") is None
    assert store.authenticate("root", "given-password").role == "admin"


def test_ensure_admin_when_users_exist(store: StateStore) -> None:
    store.add_user("alice", "analyst", "password1")
    assert ensure_admin(store, role="owner", password=None) is None
    assert [u.name for u in store.list_users()] == ["alice"]


def test_ensure_admin_rejects_short_password(store: StateStore) -> None:
    with pytest.raises(InputError, match="at least 8"):
        ensure_admin(store, role="owner", password="short")
