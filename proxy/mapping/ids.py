"""The FHIR id of a mapped resource (the keyed hash is ``proxy.fhir.ids.ResourceIds``)."""

from __future__ import annotations

from proxy.fhir.ids import ResourceIds


def stable_id(ids: ResourceIds, patient_id: str, backend: str, mapping_name: str, record_id: str) -> str:
    """The FHIR id of a mapped resource: ``<patient id>-<backend>-<16 hex of keyed BLAKE2b>``.

    Stable for (patient, source, record) under the deployment's key, and not computable without
    it; it starts with the patient id so that a read by id knows whom to ask the backends about
    (see proxy.fhir.ids).
    """
    return f"{patient_id}-{backend}-{ids.digest(mapping_name, record_id)}"
