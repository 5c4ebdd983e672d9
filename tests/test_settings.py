"""Bad configuration and broken mappings fail at start-up, naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from proxy.app import create_app
from proxy.mapping.validate import MappingError
from proxy.settings import DEFAULT_CONFIG, REPO_ROOT, ConfigError, load_settings


def config_with(tmp_path: Path, change: dict) -> Path:  # type: ignore[type-arg]
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    for dotted, value in change.items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    doc["mappings_dir"] = str(REPO_ROOT / "mappings")
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_the_shipped_config_loads() -> None:
    s = load_settings()
    assert [b.name for b in s.backends] == ["cosmic", "viva", "npo"]
    assert s.backend("npo").vars == (("logical_address", "SE165565594230-1000"),)
    assert s.paging.snapshots and s.paging.snapshot_ttl_s == 300
    # writes: home care to Viva and Cosmic, the ambulance to Cosmic; nobody else, nothing else
    assert s.writes.targets("homecare", "Encounter") == ("viva", "cosmic")
    assert s.writes.targets("ambulance", "Observation") == ("cosmic",)
    assert s.writes.targets("clinician", "Observation") == () == s.writes.targets("patient", "Encounter")
    assert s.writes.targets("homecare", "Condition") == ()


def test_a_config_elsewhere_without_mappings_dir_uses_the_shipped_mappings(tmp_path: Path) -> None:
    """A deployment's own file (``serve --config /etc/...``) need not copy the mappings beside it;
    a relative ``mappings_dir`` is still relative to the file."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    del doc["mappings_dir"]
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "facade.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert load_settings(path).mappings_dir == (REPO_ROOT / "mappings").resolve()
    doc["mappings_dir"] = "../ours"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert load_settings(path).mappings_dir == (tmp_path / "ours").resolve()


def test_the_default_config_of_an_installed_wheel_keeps_its_store_in_the_users_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config a wheel ships sits inside site-packages: its relative SQLite path lands in
    $XDG_STATE_HOME/fhir-facade instead; any other config's stays relative to the file."""
    import proxy.settings

    packaged = tmp_path / "site-packages" / "proxy" / "_data"
    (packaged / "config").mkdir(parents=True)
    shutil.copy(DEFAULT_CONFIG, packaged / "config" / "facade.yaml")
    monkeypatch.setattr(proxy.settings, "PACKAGED_DATA", packaged)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    shipped = load_settings(packaged / "config" / "facade.yaml", env=env)
    assert shipped.store.sqlite_path == tmp_path / "state" / "fhir-facade" / "facade.sqlite"
    assert load_settings(DEFAULT_CONFIG, env=env).store.sqlite_path == REPO_ROOT / "var" / "facade.sqlite"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"facade.port": "eighty"}, "facade.port"),
        ({"facade.base_path": "fhir"}, "facade.base_path"),
        ({"facade.colour": "blue"}, "facade"),
        ({"backends.cosmic.base_url": "ftp://x"}, "backends.cosmic.base_url"),
        ({"backends.cosmic.base_url": "http://x/api?k=1"}, "backends.cosmic.base_url"),  # paths follow it
        ({"backends.cosmic.timeout": {"total_s": 0}}, "backends.cosmic.timeout.total_s"),
        ({"backends.cosmic.empty_statuses": [200]}, "backends.cosmic.empty_statuses"),
        ({"merge.source_priority": ["cosmic", "viva"]}, "merge.source_priority"),
        ({"backends.Cosmic!": {"base_url": "http://x"}}, "backends.Cosmic!"),
        ({"paging.snapshot_ttl_s": 0}, "paging.snapshot_ttl_s"),
        ({"paging.snapshots": "yes"}, "paging.snapshots"),
        ({"paging.ttl_s": 60}, "paging"),
        ({"facade.max_answer_bytes": 1024 * 1024 - 1}, "facade.max_answer_bytes"),  # below max_body_bytes
        ({"cache.max_bytes": "a lot"}, "cache.max_bytes"),
        ({"facade.map_workers": -1}, "facade.map_workers"),
        ({"facade.map_workers": "two"}, "facade.map_workers"),
        ({"facade.map_from_bytes": -1}, "facade.map_from_bytes"),
        ({"writes.policy.patient": {"Observation": ["cosmic"]}}, "writes.policy.patient"),
        ({"writes.policy.nobody": {"Observation": ["cosmic"]}}, "writes.policy.nobody"),
        ({"writes.policy.homecare.Condition": ["cosmic"]}, "writes.policy.homecare.Condition"),
        ({"writes.policy.homecare.Encounter": ["elsewhere"]}, "writes.policy.homecare.Encounter"),
        ({"writes.policy.homecare.Encounter": ["viva", "viva"]}, "writes.policy.homecare.Encounter"),
        ({"writes.policy.homecare.Encounter": []}, "writes.policy.homecare.Encounter"),
        ({"writes.who": {}}, "writes"),
        ({"outbox.lease_s": 0}, "outbox.lease_s"),
        ({"outbox.lease_s": 4}, "outbox.lease_s"),  # not longer than npo's total_s: 4
        ({"outbox.lease_s": 4.4}, "outbox.lease_s"),  # 90 % of it (what a request is given) is less
        ({"outbox.claim_limit": 0}, "outbox.claim_limit"),
        ({"outbox.max_attempts": 2.5}, "outbox.max_attempts"),
        ({"outbox.backoff_base_s": 10, "outbox.backoff_cap_s": 5}, "outbox.backoff_cap_s"),
        ({"outbox.poll_s": "often"}, "outbox.poll_s"),
        ({"outbox.wait_s": -1}, "outbox.wait_s"),
        ({"outbox.retries": 3}, "outbox"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, change: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as exc:
        load_settings(config_with(tmp_path, change))
    assert str(exc.value).startswith(f"facade.yaml: {key}")


def test_patient_id_key_from_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="16, 24 or 32 bytes"):
        load_settings(env={"FHIR_FACADE_PATIENT_ID_KEY": "c2hvcnQ="})
    with pytest.raises(ConfigError, match="base64"):
        load_settings(env={"FHIR_FACADE_PATIENT_ID_KEY": "***"})
    assert load_settings(env={"FHIR_FACADE_PATIENT_ID_KEY": "a" * 43 + "="}).patient_id_key is not None


def test_a_broken_mapping_stops_start_up(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", mappings)
    broken = mappings / "viva" / "vardplaner.yaml"
    broken.write_text(broken.read_text(encoding="utf-8").replace("$path:", "$pth:", 1), encoding="utf-8")
    path = config_with(tmp_path, {})
    path.write_text(path.read_text(encoding="utf-8").replace(str(REPO_ROOT / "mappings"), str(mappings)))
    with pytest.raises(MappingError) as exc:
        create_app(load_settings(path), patient_id_key=b"k" * 16)
    message = str(exc.value)
    assert message.startswith("mappings/viva/vardplaner.yaml: fields.")
    assert "$pth" in message


def test_the_simulators_long_history_knobs(tmp_path: Path) -> None:
    shipped = load_settings().simulators
    assert (shipped.records, shipped.years, shipped.cached_records) == ((0, 0), 10, 250_000)
    assert shipped.render_cache_bytes == 0  # (every answer rendered anew: the default)
    kept = load_settings(config_with(tmp_path, {"simulators.render_cache_bytes": 1 << 26}))
    assert kept.simulators.render_cache_bytes == 1 << 26
    fixed = load_settings(config_with(tmp_path, {"simulators.records": 5000, "simulators.years": 12}))
    assert (fixed.simulators.records, fixed.simulators.years) == ((5000, 5000), 12)
    ranged = load_settings(config_with(tmp_path, {"simulators.records": [50, 20000]}))
    assert ranged.simulators.records == (50, 20000)
    bounded = load_settings(config_with(tmp_path, {"simulators.cached_records": 1000}))
    assert bounded.simulators.cached_records == 1000


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"simulators.records": -1}, "simulators.records"),
        ({"simulators.records": [0, 10]}, "simulators.records"),  # a range starts at 1
        ({"simulators.records": [10, 5]}, "simulators.records"),
        ({"simulators.records": "many"}, "simulators.records"),
        ({"simulators.records": True}, "simulators.records"),
        ({"simulators.years": 0}, "simulators.years"),
        ({"simulators.cached_records": 0}, "simulators.cached_records"),
        ({"simulators.render_cache_bytes": -1}, "simulators.render_cache_bytes"),
        ({"simulators.history": 5}, "simulators"),
    ],
)
def test_bad_long_history_knobs_name_the_key(tmp_path: Path, change: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as exc:
        load_settings(config_with(tmp_path, change))
    assert str(exc.value).startswith(f"facade.yaml: {key}")


def test_the_answer_and_cache_budgets_are_read(tmp_path: Path) -> None:
    shipped = load_settings()
    assert (shipped.facade.max_body_bytes, shipped.facade.max_answer_bytes) == (1 << 20, 256 << 20)
    assert shipped.cache.max_bytes == 256 << 20
    s = load_settings(
        config_with(
            tmp_path,
            {"facade.max_body_bytes": 4096, "facade.max_answer_bytes": 8192, "cache.max_bytes": 65536},
        )
    )
    assert (s.facade.max_body_bytes, s.facade.max_answer_bytes, s.cache.max_bytes) == (4096, 8192, 65536)


def test_the_mapping_processes_are_off_unless_asked_for(tmp_path: Path) -> None:
    shipped = load_settings()
    assert (shipped.facade.map_workers, shipped.facade.map_from_bytes) == (0, 256 << 10)
    s = load_settings(config_with(tmp_path, {"facade.map_workers": 2, "facade.map_from_bytes": 65536}))
    assert (s.facade.map_workers, s.facade.map_from_bytes) == (2, 65536)


def test_the_outbox_settings_are_read(tmp_path: Path) -> None:
    from proxy.settings import OutboxSettings

    shipped = load_settings().outbox
    assert shipped == OutboxSettings()  # the shipped file says what the defaults are
    assert (shipped.lease_s, shipped.wait_s, shipped.max_attempts) == (60.0, 2.0, 10)
    s = load_settings(
        config_with(
            tmp_path,
            {
                "outbox": {
                    "lease_s": 30,
                    "claim_limit": 4,
                    "max_attempts": 3,
                    "backoff_base_s": 0.5,
                    "backoff_cap_s": 20,
                    "poll_s": 0.2,
                    "wait_s": 0,
                }
            },
        )
    ).outbox
    assert s == OutboxSettings(30.0, 4, 3, 0.5, 20.0, 0.2, 0.0)
    # left out: the defaults (the cap never below the base given)
    assert load_settings(config_with(tmp_path, {"outbox": None})).outbox == OutboxSettings()
    low = load_settings(config_with(tmp_path, {"outbox": {"backoff_base_s": 600}})).outbox
    assert (low.backoff_base_s, low.backoff_cap_s) == (600.0, 600.0)
