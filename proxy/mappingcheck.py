"""``fhir-facade mappings check``: compile every mapping and validate what it produces.

The caller (the CLI, which may import the simulators: the product does not) starts each backend's
simulator in-process and passes in their URLs and the sample patients; for every named demo patient
and a few generated ones, every mapping runs through the real pipeline stages (fan-out, decode, map,
merge) and each resulting resource is validated with fhir.resources (R4B models). The request path
never touches those models — they are too slow for it — which is why this check, and the test suite, do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from proxy.access.pdl import care_documentation
from proxy.app import compile_mappings
from proxy.fanout.client import BackendClient
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.merge.facts import merge
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import fetch_and_map
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

    @property
    def ok(self) -> bool:
        return not (self.invalid or self.degraded or self.silent or self.unattributed)


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
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    report = CheckReport()
    async with backends as urls:
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
