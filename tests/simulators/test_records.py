"""The hand-written demo records' data files (``proxy/simulators/records.py``): the relative-date
notation, and a file that cannot be read fails naming the file and the place in it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from proxy.simulators import cosmic, npo, viva
from proxy.simulators.population import DEMO_PEOPLE
from proxy.simulators.records import DATA, hand_written


def ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M")


def day(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d")


def write(root: Path, text: str) -> Path:
    (root / "sim").mkdir()
    (root / "sim" / "someone.yaml").write_text(text, encoding="utf-8")
    return root


def test_relative_dates_count_back_from_the_reference_day_and_the_rest_is_served_as_written(
    tmp_path: Path,
) -> None:
    root = write(
        tmp_path,
        "pnr: '191212121212'\nrecords:\n  things:\n"
        '  - {at: {days_ago: 1, at: "08:05"}, date: {days_ago: 31}, later: {days_ago: -2, at: "14:00"},'
        " text: 'days_ago', n: 3, none: null}\n",
    )
    records = hand_written("sim", ts, day, root)
    assert records == {
        "191212121212": {
            "things": [
                {
                    "at": "2026-10-31 08:05",  # the reference day is 2026-11-01
                    "date": "2026-10-01",
                    "later": "2026-11-03 14:00",
                    "text": "days_ago",
                    "n": 3,
                    "none": None,
                }
            ]
        }
    }
    # each call builds new objects: a simulator that changes its copy changes no one else's
    records["191212121212"]["things"].clear()
    assert hand_written("sim", ts, day, root)["191212121212"]["things"]


@pytest.mark.parametrize(
    ("date", "says"),
    [
        ("{days_ago: 1, at: 10:15}", "quoted"),  # YAML 1.1 reads 10:15 as the number 615
        ('{days_ago: 1, at: "25:00"}', "HH:MM"),
        ('{days_ago: "1"}', "relative date"),
        ('{days_ago: 1, hour: "10:00"}', "relative date"),
    ],
)
def test_a_malformed_relative_date_fails_naming_file_and_place(tmp_path: Path, date: str, says: str) -> None:
    root = write(tmp_path, f"pnr: '191212121212'\nrecords:\n  things:\n  - when: {date}\n")
    with pytest.raises(ValueError, match=rf"sim/someone\.yaml: records\.things\[0\]\.when: .*{says}"):
        hand_written("sim", ts, day, root)


def test_a_file_without_pnr_and_records_fails_naming_it(tmp_path: Path) -> None:
    root = write(tmp_path, "records: {}\n")
    with pytest.raises(ValueError, match=r"sim/someone\.yaml: expects"):
        hand_written("sim", ts, day, root)


def test_every_data_file_is_a_named_demo_patient_and_every_backend_reads_its_own() -> None:
    demo = {p.pnr for p in DEMO_PEOPLE}
    for backend, module in (("cosmic", cosmic), ("viva", viva), ("npo", npo)):  # (any format will do)
        files = hand_written(backend, module.ts, day)
        assert files and set(files) <= demo, backend
    assert sorted(p.name for p in DATA.iterdir()) == ["cosmic", "npo", "people.yaml", "viva"]
