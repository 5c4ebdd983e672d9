"""Bad configuration and broken mappings fail at start-up, naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from proxy.app import create_app
from proxy.mapping.compiler import MappingError
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
