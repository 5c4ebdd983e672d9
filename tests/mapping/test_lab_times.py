"""A lab result's two times, over the simulators' real data: when the sample was taken and when the
result was issued.

``Observation.effectiveDateTime`` is the sampling time (the clinically relevant time: what the
patient's blood was like then) and ``Observation.issued`` the time the result was made available —
never swapped, never one lost. Cosmic: ``sampledAt`` / ``resultAt``. NPÖ (GetLaboratoryOrderOutcome):
``analysis.analysisTime`` — a period, "here the time of sampling is given"; a missing start or end
means both are the same time — / ``registrationTime`` (when the result was stored in the producing
system). In every record the sample is taken before the result is issued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from proxy.simulators import npo
from proxy.simulators import population as pop
from tests import contract
from tests.mapping import test_cosmic_mappings as cm
from tests.mapping import test_npo_mappings as nm


def local(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=None)


@pytest.fixture
def client(cosmic_client: Any) -> Any:
    return cosmic_client


async def test_cosmic_lab_sampled_is_effective_and_result_is_issued(client: Any) -> None:
    count = 0
    for person in cm.COSMIC_PEOPLE:
        mapped = await cm.fetch_and_map(client, person)
        raw = {rec["resultId"]: rec for rec in cm.RAW_DATA[person.pnr]["labresults"]}
        for mr in mapped["labresults"]:
            rec = raw[mr.origin_key.rsplit("|", 1)[1]]
            obs = mr.resource
            sampled = datetime.strptime(rec["sampledAt"], "%Y-%m-%d %H:%M")
            resulted = datetime.strptime(rec["resultAt"], "%Y-%m-%d %H:%M")
            assert local(obs["effectiveDateTime"]) == sampled
            assert local(obs["issued"]) == resulted
            assert sampled < resulted, rec["resultId"]
            count += 1
    assert count >= 20


async def test_lucia_cosmic_sample_taken_late_answered_next_morning(client: Any) -> None:
    """Sampled at the health centre late in the afternoon, analysed in the central lab's morning run."""
    mapped = await cm.fetch_and_map(client, pop.LUCIA)
    (obs,) = [mr.resource for mr in mapped["labresults"]]
    assert obs["code"]["coding"][0]["code"] == "NPU02319"
    assert obs["effectiveDateTime"] == "2026-09-20T16:40:00+02:00"
    assert obs["issued"] == "2026-09-21T07:15:00+02:00"


def test_npo_lucia_sample_registered_next_morning(npo_everyone: contract.Everyone) -> None:
    mapped, _, _ = npo_everyone
    (obs,) = [mr.resource for mr in mapped[pop.LUCIA.pnr]["laboratory-outcomes"]]
    assert obs["effectiveDateTime"] == "2026-07-04T10:05:00+02:00"
    assert obs["issued"] == "2026-07-05T08:40:00+02:00"


def test_the_npo_simulator_refuses_a_result_registered_before_its_sample() -> None:
    with pytest.raises(ValueError, match="before its sample"):
        npo.lab(
            pop.TOLVAN.pnr, "L-X", datetime(2026, 3, 2, 20, 10), "NPU19748", "P-CRP", 3, "mg/L", None, "5"
        )


def test_npo_analysis_time_is_effective_and_registration_is_issued(npo_everyone: contract.Everyone) -> None:
    mapped, _, _ = npo_everyone
    count = 0
    for person in nm.PEOPLE:
        records = {}
        for r in nm.RAW.get(person.pnr, {}).get("laboratoryOrderOutcome", []):
            head = r["laboratoryOrderOutcomeHeader"]
            records[f"{head['sourceSystemHSAId']}|{head['documentId']}"] = r
        for mr in mapped[person.pnr]["laboratory-outcomes"]:
            rec = records[mr.origin_key.split("|", 1)[1]]
            body = rec["laboratoryOrderOutcomeBody"]
            period = body["analysis"]["analysisTime"]
            assert isinstance(period, dict)  # the contract's TimePeriodType, not a bare time stamp
            sampled = datetime.strptime(period.get("start") or period["end"], "%Y%m%d%H%M%S")
            registered = datetime.strptime(body["registrationTime"], "%Y%m%d%H%M%S")
            obs = mr.resource
            assert local(obs["effectiveDateTime"]) == sampled
            assert local(obs["issued"]) == registered
            assert sampled < registered, rec["laboratoryOrderOutcomeHeader"]["documentId"]
            count += 1
    assert count >= 45


def test_npo_tolvan_emergency_labs_answered_after_the_evening_sample(npo_everyone: contract.Everyone) -> None:
    mapped, _, _ = npo_everyone
    labs = [mr.resource for mr in mapped[pop.TOLVAN.pnr]["laboratory-outcomes"]]
    assert len(labs) == 4
    for obs in labs:
        assert obs["effectiveDateTime"] == "2025-02-28T20:10:00+01:00"
        assert obs["issued"] == "2025-02-28T21:05:00+01:00"


def test_npo_analysis_time_with_only_an_end_is_the_sampling_time() -> None:
    """The contract: a missing start or end means both are the same time."""
    rec = npo.lab(
        pop.LENNART.pnr, "L-1", datetime(2026, 3, 2, 8, 0), "NPU19748", "P-CRP", 3, "mg/L", None, "5"
    )
    rec["laboratoryOrderOutcomeBody"]["analysis"]["analysisTime"] = {"end": "20260302081500"}
    body = {
        "Envelope": {
            "Body": {"GetLaboratoryOrderOutcomeResponse": {"laboratoryOrderOutcome": npo._drop_none(rec)}}
        }
    }
    out, skipped = nm.map_records(
        nm.BY_NAME["laboratory-outcomes"], body, nm.context(pop.LENNART), source_uri=nm.SOURCE_URI, priority=2
    )
    assert skipped == 0
    (obs,) = [mr.resource for mr in out]
    assert obs["effectiveDateTime"] == "2026-03-02T08:15:00+01:00"
    assert obs["issued"] == "2026-03-02T14:30:00+01:00"
