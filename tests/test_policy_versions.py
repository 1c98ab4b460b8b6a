"""Policy versions in the state store, the atomic policy file, and replacing a
domain's policy while it runs (gateway.policy_versions, Domain.replace_policy,
Engine.retire), without the wire. Every domain here is this module's own."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import policy_versions
from gateway.domain import ENGINES_DIR, Domain
from gateway.engine import Engine
from gateway.errors import ConfigError, InputError, PolicyError
from gateway.state import StateStore
from policy.loader import parse_policy_for, read_policy_file
from policy.principal import Principal
from tests.conftest import NUMBERS_ROWS, TEST_POLICY

RITA = Principal("rita", "researcher")
SITES = "SELECT DISTINCT site FROM oncology.screenings"
BULK_RAW = "      bulk: {mode: raw}\n"
RAW_ONCOLOGY = "      oncology: {mode: raw}\n      registry: {mode: raw}\n"


def own_policy(test_root: Path) -> str:
    """The shared test policy, its sources named by absolute path (nothing is written there)."""
    return TEST_POLICY.replace("path: data/", f"path: {test_root / 'data'}/")


def with_filter(text: str, condition: str) -> str:
    """``text`` with a row filter on the researcher's oncology grant."""
    changed = text.replace(
        RAW_ONCOLOGY,
        f'      oncology: {{mode: raw, row_filter: "{condition}"}}\n'
        "      registry: {mode: raw}\n",
    )
    assert changed != text
    return changed


def sites(domain: Domain, principal: Principal = RITA) -> set[str]:
    return {r["site"] for r in domain.execute(principal, SITES).read_all().to_pylist()}


@pytest.fixture
def policy_file(test_root: Path, tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "policy.yaml"
    path.parent.mkdir()
    path.write_text(own_policy(test_root))
    return path


@pytest.fixture
def domain(policy_file: Path, tmp_path: Path) -> Iterator[Domain]:
    opened = Domain.open(policy_file, tmp_path / "state")
    yield opened
    opened.close()


# ---------------------------------------------------------------- the store


def test_versions_are_numbered_kept_and_newest_is_live(tmp_path: Path):
    with StateStore(tmp_path) as store:
        assert policy_versions.live(store) is None
        with pytest.raises(InputError, match="No policy version is stored yet"):
            policy_versions.get(store)
        assert policy_versions.record_if_new(store, "a: 1\n") == 1
        assert policy_versions.record_if_new(store, "a: 1\n") == 1  # same text: no new version
        assert policy_versions.record(store, "a: 2\n", by="owner", comment="tighter") == 2
        assert policy_versions.record_if_new(store, "a: 1\n") == 3  # back to an old text
        listed = policy_versions.versions(store)
        assert [v.version for v in listed] == [3, 2, 1]
        assert [v.created_by for v in listed] == ["file", "owner", "file"]
        second = policy_versions.get(store, 2)
        assert (second.yaml, second.comment) == ("a: 2\n", "tighter")
        assert second.sha256 == policy_versions.sha256("a: 2\n")
        assert policy_versions.live(store) == listed[0]
        with pytest.raises(InputError, match="no policy version 9; versions are 1 to 3"):
            policy_versions.get(store, 9)
        policy_versions.forget(store, 2)  # only the newest may be taken back
        assert len(policy_versions.versions(store)) == 3
        policy_versions.forget(store, 3)
        assert [v.version for v in policy_versions.versions(store)] == [2, 1]
        as_json = second.to_json(live=False)
        assert as_json["created_at"].endswith("+00:00") and as_json["yaml"] == "a: 2\n"
        assert "yaml" not in second.to_json(live=False, text=False)


def test_policy_file_is_replaced_atomically_keeping_its_mode(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    policy_versions.write_policy_file(path, "new ε\n")
    assert path.read_text(encoding="utf-8") == "new ε\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]  # no temporary file left


def test_a_policy_file_that_cannot_be_written_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.mkdir()  # a directory cannot be renamed over
    (path / "inside").write_text("old\n")
    with pytest.raises(ConfigError, match="Cannot write the policy file .*not changed"):
        policy_versions.write_policy_file(path, "new\n")
    assert (path / "inside").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.yaml"]  # no temporary left


def test_policy_text_keeps_its_file_name_and_lines(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ndomain: {name: d}\ndatasets: {}\nrolse: {}\n")
    with pytest.raises(PolicyError, match=r"p\.yaml:4: rolse: Unknown key 'rolse'"):
        read_policy_file(path)
    with pytest.raises(PolicyError) as found:
        parse_policy_for("version: 1\ndomain: {name: d}\ndatasets:\n  x: {tables: 3}\n", path)
    assert found.value.line == 4 and found.value.file == str(path)


# ---------------------------------------------------------------- starting


def test_start_records_the_file_once_and_an_edited_file_as_a_new_version(
        policy_file: Path, tmp_path: Path):
    text = policy_file.read_text()
    state = tmp_path / "state"
    for _ in range(2):  # a restart with the same file adds no version
        domain = Domain.open(policy_file, state)
        assert domain.policy_version == 1
        domain.close()
    policy_file.write_text(text + "# edited by hand\n")
    domain = Domain.open(policy_file, state)
    try:
        assert domain.policy_version == 2
        newest, first = policy_versions.versions(domain.store)
        assert (newest.created_by, newest.yaml) == ("file", text + "# edited by hand\n")
        assert (first.created_by, first.yaml) == ("file", text)
    finally:
        domain.close()


# ---------------------------------------------------------------- replacing


def test_replacement_is_live_at_once_recorded_and_written(domain: Domain, policy_file: Path):
    text = policy_file.read_text()
    assert sites(domain) == {"north", "south", "east", "west"}
    new_text = with_filter(text, "site = 'south'")
    done = domain.replace_policy(new_text, by="owner", comment="south only", expected_version=1)
    assert done.changed and (done.state.version, done.previous.version) == (2, 1)
    assert domain.policy_version == 2 and domain.state is done.state
    assert sites(domain) == {"south"}
    assert policy_file.read_text() == new_text
    newest = policy_versions.get(domain.store)
    assert (newest.version, newest.created_by, newest.comment) == (2, "owner", "south only")
    assert policy_versions.get(domain.store, 1).yaml == text


def test_a_plan_cached_under_the_old_policy_is_never_reused(domain: Domain, policy_file: Path):
    """Security: a replacement that narrows access takes effect for cached plans too."""
    before = domain.plan(RITA, SITES)
    assert domain.plan(RITA, SITES) is before  # cached
    assert "south" not in before.sql
    domain.replace_policy(with_filter(policy_file.read_text(), "site = 'south'"), by="owner")
    after = domain.plan(RITA, SITES)
    assert after is not before and "'south'" in after.sql
    assert sites(domain) == {"south"}
    # ... and the catalog schemas, result schemas and dp routes are the new policy's too.
    text = policy_file.read_text().replace(
        "      bulk: {mode: raw}\n", "      bulk: {mode: deny}\n")
    assert ("bulk", "numbers") in {(t.dataset, t.name) for t in domain.catalog(RITA)}
    domain.replace_policy(text, by="owner")
    assert ("bulk", "numbers") not in {(t.dataset, t.name) for t in domain.catalog(RITA)}
    with pytest.raises(InputError, match="Table 'bulk.numbers' not found"):
        domain.result_schema(RITA, "SELECT id FROM bulk.numbers")


def test_a_stream_started_before_finishes_on_the_old_engine(domain: Domain, policy_file: Path):
    old_engine = domain.engine
    old_dir = old_engine.work_dir
    reader = domain.execute(RITA, "SELECT id FROM bulk.numbers")
    first = reader.read_next_batch()
    text = policy_file.read_text().replace(BULK_RAW, "      bulk: {mode: deny}\n")
    domain.replace_policy(text, by="owner")
    assert domain.engine is not old_engine
    assert domain.engine.work_dir.parent.name == ENGINES_DIR
    with pytest.raises(InputError, match="Table 'bulk.numbers' not found"):
        domain.execute(RITA, "SELECT id FROM bulk.numbers")
    assert old_engine.retired and not old_engine.closed and old_dir.exists()
    rows, total = first.num_rows, sum(first.column(0).to_pylist())
    for batch in reader:
        rows += batch.num_rows
        total += sum(batch.column(0).to_pylist())
    assert (rows, total) == (NUMBERS_ROWS, NUMBERS_ROWS * (NUMBERS_ROWS - 1) // 2)
    assert old_engine.closed and not old_dir.exists()


def test_refused_replacements_change_nothing(domain: Domain, policy_file: Path):
    text = policy_file.read_text()
    bad_mask = text.replace("zip: {mask: \"left(zip, 3) || '**'\"}",
                            "zip: {mask: \"left(zipp, 3) || '**'\"}")
    assert bad_mask != text
    mask_line = bad_mask[:bad_mask.index("zipp")].count("\n") + 1
    engines = domain.store.data_dir / ENGINES_DIR
    live = domain.state
    cases = [
        ("version: 1\ndomain: [unclosed\n", r"line 3: Not valid YAML"),
        (bad_mask, rf"line {mask_line}: datasets\.oncology\.tables\.patients\.columns\.zip\.mask: "
                   r"Unknown column 'zipp'.*Did you mean 'zip'\?"),
        (text.replace("  owner: {admin: true}\n", "  owner: {}\n"),
         "no admin role"),
    ]
    for candidate, message in cases:
        with pytest.raises(InputError, match=message):
            domain.replace_policy(candidate, by="owner")
    with pytest.raises(InputError, match="the live policy is version 1, not 7; reload and retry"):
        domain.replace_policy(with_filter(text, "site = 'south'"), by="owner",
                              expected_version=7)
    with pytest.raises(InputError, match="Your role 'owner' would no longer be an admin role"):
        domain.replace_policy(text.replace("  owner: {admin: true}\n",
                                           "  owner: {}\n  boss: {admin: true}\n"),
                              by="owner", principal=Principal("owner", "owner"))
    assert domain.state is live and domain.policy_version == 1
    assert policy_file.read_text() == text
    assert [v.version for v in policy_versions.versions(domain.store)] == [1]
    assert sites(domain) == {"north", "south", "east", "west"}
    assert not engines.exists() or not any(engines.iterdir())  # candidates were deleted


def test_a_failure_after_the_file_was_written_undoes_the_file_and_the_version(
        domain: Domain, policy_file: Path, monkeypatch: pytest.MonkeyPatch):
    text = policy_file.read_text()
    live = domain.state

    def broken(policy: object) -> None:
        assert policy_file.read_text() != text  # the new file was written by then
        raise OSError("disk full")

    monkeypatch.setattr(domain.ledger, "apply_policy_caps", broken)
    with pytest.raises(OSError, match="disk full"):
        domain.replace_policy(with_filter(text, "site = 'south'"), by="owner")
    assert policy_file.read_text() == text
    assert [v.version for v in policy_versions.versions(domain.store)] == [1]
    assert domain.state is live and sites(domain) == {"north", "south", "east", "west"}
    engines = domain.store.data_dir / ENGINES_DIR
    assert not any(engines.iterdir())


def test_the_same_text_again_is_not_a_new_version(domain: Domain, policy_file: Path):
    done = domain.replace_policy(policy_file.read_text(), by="owner")
    assert not done.changed and done.state is done.previous
    assert [v.version for v in policy_versions.versions(domain.store)] == [1]


def test_replacement_applies_the_new_dataset_caps(domain: Domain, policy_file: Path):
    text = policy_file.read_text()
    capped = text.replace("    tags: [cancer, screening]\n",
                          "    tags: [cancer, screening]\n    budget_cap: {epsilon: 10}\n")
    assert capped != text
    assert domain.ledger.dataset_caps() == {}
    domain.replace_policy(capped, by="owner")
    assert domain.ledger.dataset_caps()["oncology"][0] == 10.0
    domain.replace_policy(text, by="owner")
    assert domain.ledger.dataset_caps() == {}


def test_replacements_and_queries_at_once(domain: Domain, policy_file: Path):
    """Every query sees one whole version: all sites, or only the south; never an error."""
    text = policy_file.read_text()
    south = with_filter(text, "site = 'south'")
    seen: list[set[str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            try:
                seen.append(sites(domain))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(4):
            domain.replace_policy(south if i % 2 == 0 else text, by="owner")
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert seen and all(s in ({"south"}, {"north", "south", "east", "west"}) for s in seen)
    assert [v.version for v in policy_versions.versions(domain.store)] == [5, 4, 3, 2, 1]


def test_domain_start_removes_engines_left_by_a_crash(policy_file: Path, tmp_path: Path):
    stale = tmp_path / "state" / ENGINES_DIR / "left-over"
    stale.mkdir(parents=True)
    domain = Domain.open(policy_file, tmp_path / "state")
    domain.close()
    assert not stale.exists()


# ---------------------------------------------------------------- retiring an engine


@pytest.fixture
def engine(domain: Domain, tmp_path: Path) -> Engine:
    """A second engine over the same sources, which the test may retire."""
    from gateway.domain import build_engine

    return build_engine(domain.policy, tmp_path / "spare")


def test_an_idle_engine_closes_and_is_deleted_when_retired(engine: Engine):
    assert engine.work_dir.exists()
    engine.retire()
    assert engine.closed and not engine.work_dir.exists()


def test_a_retired_engine_waits_for_its_streams(engine: Engine):
    reader = engine.execute("SELECT range AS x FROM range(1000000)", batch_rows=1000)
    reader.read_next_batch()
    with engine.in_use():
        engine.retire()
        assert not engine.closed
    assert not engine.closed  # the stream still reads
    assert sum(b.num_rows for b in reader) == 999_000
    assert engine.closed and not engine.work_dir.exists()


def test_a_stream_dropped_unread_does_not_keep_a_retired_engine_open(engine: Engine):
    import gc

    reader = engine.execute("SELECT range AS x FROM range(10)")
    engine.retire()
    assert not engine.closed
    del reader
    gc.collect()
    assert engine.closed and not engine.work_dir.exists()
