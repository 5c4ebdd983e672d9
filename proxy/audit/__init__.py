"""The access log: one AuditEvent (IHE BALP shape) per request that touches patient data, written
durably *before* the answer leaves.

Writes are group-committed: concurrent requests queue their events, one writer task stores
whatever is queued in one transaction and then releases every waiting request. If the store cannot
take a write, the request gets 503 and discloses nothing. The log holds who, which patient, what
(interaction, resource types, sources, how many resources each disclosed), purpose, outcome and
time — never a token, never clinical text.

SQLite (aiosqlite, WAL) is the embedded store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import orjson

from proxy.types import FhirDict, Principal

log = logging.getLogger(__name__)

PURPOSE = {"patient": "PATRQT"}  # every care audience reads for treatment (TREAT)
SUBTYPE = {"read": "read", "search-type": "search-type", "everything": "everything"}


class AuditUnavailable(Exception):
    """The audit store could not take the event: the request must not disclose anything."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    recorded: str
    patient_pnr: str
    audience: str
    user_hsa_id: str | None
    outcome: int  # BALP: 0 success, 4 minor failure (partial), 8 serious (refused/not found), 12 major
    event: FhirDict


def audit_event(
    principal: Principal,
    *,
    interaction: str,
    patient_id: str,
    resource_types: list[str],
    disclosed: Mapping[str, int],
    degraded: list[str],
    status: int,
) -> FhirDict:
    """An AuditEvent after IHE BALP (type rest, subtype the interaction)."""
    outcome = 0 if status < 400 and not degraded else 4 if status < 400 else 8 if status < 500 else 12
    purpose = PURPOSE.get(principal.audience, "TREAT")
    who: list[FhirDict] = [
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
                ]
            },
            "who": {"identifier": {"system": "urn:oid:1.2.752.129.2.1.4.1", "value": principal.user_hsa_id}}
            if principal.user_hsa_id
            else {"display": "the patient"},
            "requestor": True,
            "role": [{"coding": [{"system": "urn:fhir-facade:audience", "code": principal.audience}]}],
            "purposeOfUse": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}
                    ]
                }
            ],
        },
        {
            "type": {
                "coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150"}]
            },
            "who": {"display": principal.client_id},
            "requestor": False,
        },
    ]
    if principal.care_unit_hsa_id:
        who[0]["extension"] = [
            {"url": "urn:fhir-facade:care-unit", "valueString": principal.care_unit_hsa_id},
            {"url": "urn:fhir-facade:care-provider", "valueString": principal.care_provider_hsa_id or ""},
        ]
    return {
        "resourceType": "AuditEvent",
        "id": uuid.uuid4().hex,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [
            {
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": SUBTYPE.get(interaction, interaction),
            }
        ],
        "action": "E" if interaction == "everything" else "R",
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "outcome": str(outcome),
        "purposeOfEvent": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}]}
        ],
        "agent": who,
        "source": {"observer": {"display": "fhir-facade"}},
        "entity": [
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            },
            {
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "description": "resource types: " + ",".join(sorted(resource_types)),
                "detail": [
                    *(
                        {"type": f"disclosed:{src}", "valueString": str(n)}
                        for src, n in sorted(disclosed.items())
                    ),
                    *({"type": f"failed:{src}", "valueString": "1"} for src in sorted(degraded)),
                ],
            },
        ],
    }


class SqliteAuditStore:
    """Embedded store: WAL, synchronous=FULL, group commit through one writer task."""

    def __init__(self, path: Path, *, max_batch: int = 500) -> None:
        self.path = path
        self.max_batch = max_batch
        self._db: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS audit_event ("
            " id INTEGER PRIMARY KEY, recorded TEXT NOT NULL, patient_pnr TEXT NOT NULL,"
            " audience TEXT NOT NULL, user_hsa_id TEXT, outcome INTEGER NOT NULL, event BLOB NOT NULL)"
        )
        await self._db.execute(
            "CREATE INDEX IF NOT EXISTS audit_by_patient ON audit_event (patient_pnr, recorded)"
        )
        await self._db.commit()
        self._writer = asyncio.create_task(self._write_batches(), name="audit-writer")

    async def write(self, record: AuditRecord) -> None:
        """Returns once the event is committed; raises AuditUnavailable if it could not be."""
        if self._writer is None or self._writer.done():
            raise AuditUnavailable("audit store is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((record, done))
        await done

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                assert self._db is not None
                await self._db.executemany(
                    "INSERT INTO audit_event (recorded, patient_pnr, audience, user_hsa_id, outcome, event)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.recorded,
                            r.patient_pnr,
                            r.audience,
                            r.user_hsa_id,
                            r.outcome,
                            orjson.dumps(r.event),
                        )
                        for r, _ in batch
                    ],
                )
                await self._db.commit()
            except Exception as exc:  # the store failed: every waiting request must refuse to disclose
                log.error("audit write failed (%s); %d request(s) refused", type(exc).__name__, len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(AuditUnavailable("audit store failed"))
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._db is not None:
            await self._db.close()
