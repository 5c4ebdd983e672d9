"""The CapabilityStatement, generated from what the compiled mappings can produce (their resource
types and, per type, the sources that hold it: ``MappingSet.sources_by_type``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxy import __version__
from proxy.fhir.searchparams import BY_TYPE, COMMON
from proxy.types import FhirDict

_SEARCH_TYPE = {"token": "token", "date": "date"}
PATIENT_PARAM = {"name": "patient", "type": "reference", "documentation": "The patient (required)"}


def capability_statement(
    sources_by_type: Mapping[str, Sequence[str]], base_url: str, software_date: str
) -> FhirDict:
    resources = []
    for rtype in sorted(sources_by_type):
        params = [
            {"name": p.name, "type": _SEARCH_TYPE[p.kind], "documentation": p.description}
            for p in (*COMMON, *BY_TYPE.get(rtype, ()))
        ]
        if rtype != "Patient":
            params.insert(0, dict(PATIENT_PARAM))
        sources = sorted(sources_by_type[rtype])
        entry: FhirDict = {
            "type": rtype,
            "documentation": "Sources: " + ", ".join(sources),
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": params,
        }
        if rtype == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                },
                {
                    "name": "summary",
                    "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary",
                    "documentation": "International Patient Summary (IPS) of what the asker may see",
                },
            ]
        resources.append(entry)
    # the resources the facade keeps itself (proxy/edge/stored.py)
    resources.append(
        {
            "type": "Consent",
            "documentation": "Consents (permit) and blocks (deny) under PDL, kept by the facade",
            "interaction": [
                {"code": "create"},
                {"code": "read"},
                {"code": "update"},
                {"code": "search-type"},
            ],
            "versioning": "versioned-update",
            "searchParam": [
                dict(PATIENT_PARAM),
                {"name": "status", "type": "token", "documentation": "active | inactive"},
            ],
        }
    )
    resources.append(
        {
            "type": "AuditEvent",
            "documentation": "The access log: the patient's own view, or a configured auditor's",
            "interaction": [{"code": "search-type"}],
            "searchParam": [dict(PATIENT_PARAM)],
        }
    )
    resources.sort(key=lambda r: r["type"])
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": software_date,
        "publisher": "fhir-facade",
        "kind": "instance",
        "software": {"name": "fhir-facade", "version": __version__},
        "implementation": {
            "description": "FHIR facade over Cosmic, Viva and NPÖ; keeps consents and the access log",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Patient-centred: every search other than Patient needs 'patient'. "
                "Paging with _count and _offset; unknown parameters are ignored unless "
                "'Prefer: handling=strict'.",
                "resource": resources,
            }
        ],
    }
