"""``fhir-facade mappings check``: compile every mapping and validate what it produces.

Write mappings (``<folder>/write/*.yaml``) are compiled too, and before the reads the sample home
visit (``home_visit``) is rendered by them and written to the simulators for each sample patient
they know: every write mapping must be accepted at least once (``unwritten`` otherwise), and what was
written is then read back, mapped and validated with the rest (the read mappings of records that only
writes make — vital signs, administrations — have data only so).

The caller (the CLI, which may import the simulators: the product does not) starts each backend's
simulator in-process and passes in their URLs and the sample patients; for every named demo patient
and a few generated ones, every mapping runs through the real pipeline stages (fan-out, decode, map,
merge) and each resulting resource is validated with fhir.resources (R4B models). The request path
never touches those models — they are too slow for it — which is why this check, and the test suite, do.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from proxy.access.pdl import care_documentation
from proxy.app import compile_mappings, compile_writes
from proxy.demo_org import MUNICIPALITY_PROVIDER, UNITS
from proxy.fanout.client import BackendClient
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.fhir.transaction import WRITTEN_SYSTEM
from proxy.mapping.write import WriteMappingError, WriteMappings
from proxy.merge.facts import merge
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import fetch_and_map
from proxy.pnr import dashed
from proxy.redact.policy import compile_policy
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings
from proxy.types import FhirDict


@dataclass
class CheckReport:
    per_mapping: Counter[str] = field(default_factory=Counter)  # resources each mapping produced
    invalid: list[str] = field(default_factory=list)  # resources that failed R4B validation
    degraded: list[str] = field(default_factory=list)  # sources that failed during the check
    silent: list[str] = field(default_factory=list)  # mappings that produced nothing from any sample
    # care documentation whose care provider came out empty (withheld from care staff at run time)
    unattributed: Counter[str] = field(default_factory=Counter)
    written: Counter[str] = field(default_factory=Counter)  # sample resources each write mapping wrote
    unwritten: list[str] = field(default_factory=list)  # write mappings no simulator accepted (why)

    @property
    def ok(self) -> bool:
        return not (self.invalid or self.degraded or self.silent or self.unattributed or self.unwritten)


# the check's writer: a nurse of the municipality's home care (the demo organisation's HSA-ids)
WRITER = {
    "writer_hsa_id": "SE2120001520-SSK1",
    "writer_unit_hsa_id": UNITS["hemsjukvard"][0],
    "writer_provider_hsa_id": MUNICIPALITY_PROVIDER,
    "writer_name": "Sara Sjuksköterska",
}


async def write_samples(
    settings: Settings,
    writes: WriteMappings,
    samples: Sequence[str],
    urls: dict[str, str],
    report: CheckReport,
) -> None:
    """Render the sample home visit for each sample patient and send it to every backend that has
    write mappings; an answer other than 201 for a patient the backend does not know is expected."""
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    refused: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for n, pnr in enumerate(samples):
            patient = ids.patient(pnr)
            for backend in settings.backends:
                if backend.name not in writes.backends:
                    continue
                for resource in home_visit(patient.fhir_id, prefix=f"{n:04x}"):
                    minted = resource["identifier"][0]["value"]
                    try:
                        mapping = writes.select(backend.name, resource)
                    except WriteMappingError as exc:
                        refused[f"{backend.name} {resource['resourceType']}"] = str(exc)
                        continue
                    if mapping is None:
                        continue
                    ctx = {
                        **dict(backend.vars),
                        **WRITER,
                        "pnr": pnr,
                        "pnr_dash": dashed(pnr),
                        "identifier": minted,
                    }
                    try:
                        request = mapping.render(resource, ctx)
                    except WriteMappingError as exc:
                        refused[mapping.name] = str(exc)
                        continue
                    headers = {**request.headers, "Idempotency-Key": f"{minted}-{backend.name}"}
                    url = urls[backend.name] + request.path
                    async with session.request(request.method, url, data=request.body, headers=headers) as r:
                        if r.status == 201:
                            report.written[mapping.name] += 1
                        else:
                            refused.setdefault(mapping.name, f"{r.status} {(await r.text())[:200]}")
    report.unwritten = sorted(
        f"{name}: {refused.get(name, 'no sample resource applies')}"
        for ms in writes.by_backend.values()
        for name in (m.name for m in ms)
        if report.written[name] == 0
    )


def validate(resource: FhirDict) -> str | None:
    """None if the resource validates against its R4B model, else the first lines of the reason."""
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValidationError, KeyError, ValueError) as exc:
        return " ".join(str(exc).splitlines()[:3])
    return None


async def check(
    settings: Settings, samples: Sequence[str], backends: AbstractAsyncContextManager[dict[str, str]]
) -> CheckReport:
    """Check every mapping on the records of ``samples`` (personnummer), fetched from ``backends``:
    entered, it yields {backend name: base URL} (the simulators, started by the caller)."""
    mappings = compile_mappings(settings, ResourceIds(DEMO_PATIENT_ID_KEY))
    writes = compile_writes(settings)
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    report = CheckReport()
    async with backends as urls:
        await write_samples(settings, writes, samples, urls, report)
        live = settings.with_backend_urls(urls)
        clients = {
            b.name: BackendClient.open(
                b, live.facade.max_body_bytes, max_answer_bytes=live.facade.max_answer_bytes
            )
            for b in live.backends
        }
        facade = Facade(
            settings=live,
            mappings=mappings,
            clients=clients,
            ids=ids,
            policy=compile_policy(settings.policy, settings.audiences.names),
        )
        try:
            for pnr in samples:
                mapped, outcomes = await fetch_and_map(facade, ids.patient(pnr), mappings.resource_types)
                report.degraded.extend(f"{o.source}: {o.detail}" for o in outcomes if o.status.degraded)
                report.per_mapping.update(m.mapping for m in mapped)
                report.unattributed.update(
                    m.mapping
                    for m in mapped
                    if not m.care_provider and care_documentation(m, settings.without_care_documentation)
                )
                for kept in merge(mapped):
                    resource = kept.resource
                    reason = validate(resource)
                    if reason:
                        report.invalid.append(
                            f"{resource['resourceType']} from {resource['meta']['source']}: {reason}"
                        )
        finally:
            for c in clients.values():
                await c.close()
    report.silent = sorted(m.name for m in mappings.all() if report.per_mapping[m.name] == 0)
    return report


# ---- the sample home visit ----------------------------------------------------------------------


def _written(value: str) -> dict[str, str]:
    return {"system": WRITTEN_SYSTEM, "value": value}


def home_visit(patient_id: str, day: str = "2026-03-10", *, prefix: str = "") -> list[FhirDict]:
    """The resources of one home visit to ``patient_id`` on ``day`` (Swedish winter time), each with
    its minted identifier (``prefix`` + a fixed hex tail), the others referenced by it."""
    subject = {"reference": f"Patient/{patient_id}"}
    ids = {
        k: (prefix + f"{n:02x}" * 16)[:32]
        for n, k in enumerate(
            ("enc", "bp", "hr", "rr", "temp", "spo2", "acvpu", "note", "given", "notgiven"), start=1
        )
    }
    enc_ref = {"identifier": _written(ids["enc"]), "type": "Encounter"}
    vital = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
        ]
    }
    at = f"{day}T10:15:00+01:00"

    def obs(key: str, loinc: str, display: str, **value: Any) -> FhirDict:
        return {
            "resourceType": "Observation",
            "identifier": [_written(ids[key])],
            "status": "final",
            "category": [vital],
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}]},
            "subject": subject,
            "encounter": enc_ref,
            "effectiveDateTime": at,
            **value,
        }

    def qty(value: float, unit: str, code: str) -> FhirDict:
        return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": code}

    def bp_part(loinc: str, value: int) -> FhirDict:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "valueQuantity": qty(value, "mmHg", "mm[Hg]"),
        }

    atc = "http://www.whocc.no/atc"
    return [
        {
            "resourceType": "Encounter",
            "identifier": [_written(ids["enc"])],
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "HH",
                "display": "home health",
            },
            "subject": subject,
            "period": {"start": f"{day}T10:00:00+01:00", "end": f"{day}T10:45:00+01:00"},
        },
        obs(
            "bp", "85354-9", "Blood pressure panel", component=[bp_part("8480-6", 142), bp_part("8462-4", 88)]
        ),
        obs("hr", "8867-4", "Heart rate", valueQuantity=qty(78, "/min", "/min")),
        obs("rr", "9279-1", "Respiratory rate", valueQuantity=qty(16, "/min", "/min")),
        obs("temp", "8310-5", "Body temperature", valueQuantity=qty(37.4, "Cel", "Cel")),
        obs("spo2", "59408-5", "Oxygen saturation", valueQuantity=qty(96, "%", "%")),
        obs(
            "acvpu",
            "80288-4",
            "Level of consciousness",
            valueCodeableConcept={
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "248234008", "display": "Mentally alert"}
                ],
                "text": "A",
            },
        ),
        {
            "resourceType": "DocumentReference",
            "identifier": [_written(ids["note"])],
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34746-8", "display": "Nurse Note"}]},
            "subject": subject,
            "date": f"{day}T10:40:00+01:00",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain",
                        "data": base64.b64encode(
                            "Hembesök: mår bra, sår omlagt. Blodtryck något förhöjt.".encode()
                        ).decode(),
                    }
                }
            ],
            "context": {"encounter": [enc_ref]},
        },
        {
            "resourceType": "MedicationAdministration",
            "identifier": [_written(ids["given"])],
            "status": "completed",
            "medicationCodeableConcept": {
                "coding": [{"system": atc, "code": "C03CA01", "display": "furosemide"}],
                "text": "Furosemid 40 mg tablett",
            },
            "subject": subject,
            "context": enc_ref,
            "effectiveDateTime": f"{day}T10:20:00+01:00",
            "dosage": {"dose": {"value": 1, "unit": "tablett"}},
        },
        {
            "resourceType": "MedicationAdministration",
            "identifier": [_written(ids["notgiven"])],
            "status": "not-done",
            "statusReason": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/reason-medication-not-given",
                            "code": "c",
                            "display": "Asleep",
                        }
                    ],
                    "text": "Sov, väcktes inte",
                }
            ],
            "medicationCodeableConcept": {
                "coding": [{"system": atc, "code": "N02BE01", "display": "paracetamol"}],
                "text": "Paracetamol 500 mg tablett",
            },
            "subject": subject,
            "context": enc_ref,
            "effectiveDateTime": f"{day}T10:25:00+01:00",
        },
    ]
