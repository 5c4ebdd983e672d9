"""The Patient merge keeps every source's facts (issue 23): identifiers, telecom and addresses united
by value with their sources, single-valued elements by priority, disagreements visible — and
protected identity still withholds every source's name, address and telecom."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.mapping.engine import references
from proxy.merge.facts import DISAGREEMENT_EXTENSION, SOURCE_EXTENSION, merge
from proxy.redact.policy import DATA_ABSENT_REASON, compile_policy, redact
from proxy.simulators.population import SANNA, TOLVAN, population
from proxy.simulators.viva import build_data
from proxy.types import MappedResource
from tests.conftest import BASE, auth, pid, validate

PNR_SYSTEM = "http://electronichealth.se/identifier/personnummer"
R = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
PRIORITY = {"cosmic": 0, "viva": 1, "npo": 2}
AUDIENCES = ("ambulance", "clinician", "homecare", "patient")
CARE_AUDIENCES = ("ambulance", "clinician", "homecare")
IDENTITY = ("name", "address", "telecom", "contact", "photo")
UNITED = ("identifier", "telecom", "address")


def patient(source: str, **fields: Any) -> MappedResource:
    meta = {"source": f"urn:fhir-facade:source:{source}", **fields.pop("meta", {})}
    resource = {"resourceType": "Patient", "id": "p1", "meta": meta, **fields}
    return MappedResource(
        resource=resource,
        source=source,
        mapping=f"{source}/patient",
        origin_key="Patient|p1",
        priority=PRIORITY[source],
        refs=references(resource),
    )


def sources_of(element: dict[str, Any]) -> list[str]:
    return [e["valueCode"] for e in element.get("extension", []) if e["url"] == SOURCE_EXTENSION]


def bare(element: dict[str, Any]) -> dict[str, Any]:
    ext = [e for e in element.get("extension", []) if e["url"] != SOURCE_EXTENSION]
    out = {k: v for k, v in element.items() if k != "extension"}
    return {**out, "extension": ext} if ext else out


PNR = {"system": PNR_SYSTEM, "value": "191212121212"}
HOME = {"use": "home", "line": ["Tolvgatan 12"], "postalCode": "12345", "city": "Stockholm", "country": "SE"}
PHONE = {"system": "phone", "value": "08-500000", "use": "home"}


def cosmic_and_viva() -> list[MappedResource]:
    return [
        patient(
            "viva",
            identifier=[PNR],
            name=[{"use": "official", "family": "Tolvansson", "given": ["Tolvan"]}],
            telecom=[PHONE],
            gender="male",
            address=[HOME],
        ),
        patient(
            "cosmic",
            identifier=[PNR],
            name=[{"use": "official", "family": "Tolvansson", "given": ["Tolvan"]}],
            gender="male",
            birthDate="1912-12-12",
            deceasedBoolean=False,
            address=[HOME],
        ),
    ]


def test_every_sources_identifiers_telecom_and_addresses_are_kept_with_their_source() -> None:
    [merged] = [r.resource for r in merge(cosmic_and_viva())]
    validate(merged)
    assert merged["meta"]["source"].endswith("cosmic")
    assert [bare(t) for t in merged["telecom"]] == [PHONE]  # Viva's phone, which Cosmic lacks
    assert sources_of(merged["telecom"][0]) == ["viva"]
    # equal values are one element naming every source that holds it
    assert [bare(i) for i in merged["identifier"]] == [PNR]
    assert sorted(sources_of(merged["identifier"][0])) == ["cosmic", "viva"]
    assert [bare(a) for a in merged["address"]] == [HOME]
    assert sorted(sources_of(merged["address"][0])) == ["cosmic", "viva"]
    assert len(merged["name"]) == 1
    # single-valued elements: the priority source's, filled from the others where it has none
    assert merged["birthDate"] == "1912-12-12" and merged["deceasedBoolean"] is False
    assert DISAGREEMENT_EXTENSION not in json.dumps(merged)  # they agree


def test_differing_addresses_are_both_kept() -> None:
    moved = {**HOME, "line": ["Nya vägen 1"]}
    viva, cosmic = cosmic_and_viva()
    viva = viva._replace(resource={**viva.resource, "address": [moved]})
    [merged] = [r.resource for r in merge([viva, cosmic])]
    validate(merged)
    assert [bare(a) for a in merged["address"]] == [HOME, moved]
    assert [sources_of(a) for a in merged["address"]] == [["cosmic"], ["viva"]]


def test_a_lower_priority_sources_differing_value_is_visible() -> None:
    viva, cosmic = cosmic_and_viva()
    viva = viva._replace(
        resource={
            **viva.resource,
            "gender": "unknown",
            "birthDate": "1912-12-13",
            "deceasedDateTime": "2020-01-01",
        }
    )
    [merged] = [r.resource for r in merge([cosmic, viva])]
    validate(merged)
    assert merged["gender"] == "male" and merged["birthDate"] == "1912-12-12"
    assert merged["deceasedBoolean"] is False and "deceasedDateTime" not in merged
    noted = [
        {sub["url"]: sub for sub in e["extension"]}
        for e in merged["extension"]
        if e["url"] == DISAGREEMENT_EXTENSION
    ]
    assert sorted(
        (n["element"]["valueString"], n["source"]["valueCode"], n["value"]["valueString"]) for n in noted
    ) == [
        ("birthDate", "viva", "1912-12-13"),
        ("deceasedDateTime", "viva", "2020-01-01"),
        ("gender", "viva", "unknown"),
    ]


def test_an_unlabelled_sources_telecom_is_withheld_with_the_protected_identity(settings: Any) -> None:
    settings_ = settings
    """Viva does not know the identity is protected; Cosmic does: the merged Patient is labelled R
    (strictest wins) and every source's name, address and telecom go for care audiences."""
    viva, cosmic = cosmic_and_viva()
    cosmic = cosmic._replace(
        resource={**cosmic.resource, "meta": {**cosmic.resource["meta"], "security": [R]}}
    )
    merged = merge([viva, cosmic])
    policy = compile_policy(settings_.policy)  # the shipped policy
    for audience in CARE_AUDIENCES:
        [shown] = redact(merged, policy, audience)
        validate(shown)
        text = json.dumps(shown)
        for secret in ("08-500000", "Tolvgatan", "Tolvansson", 'Tolvan"'):
            assert secret not in text, (audience, secret)
        assert "telecom" not in shown and "address" not in shown
        assert shown["name"] == [{"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}]
        assert [bare(i) for i in shown["identifier"]] == [PNR]
    [own] = redact(merged, policy, "patient")
    assert [bare(t) for t in own["telecom"]] == [PHONE]


_text = st.text(alphabet="abc0-", min_size=1, max_size=3)
_identifier = st.fixed_dictionaries({"system": st.sampled_from(["urn:a", "urn:b"]), "value": _text})
_telecom = st.fixed_dictionaries(
    {"system": st.sampled_from(["phone", "email"]), "value": _text},
    optional={"use": st.sampled_from(["home", "mobile"])},
)
_address = st.fixed_dictionaries({"city": _text}, optional={"line": st.lists(_text, min_size=1, max_size=2)})
_copy = st.fixed_dictionaries(
    {},
    optional={
        "identifier": st.lists(_identifier, min_size=1, max_size=3),
        "telecom": st.lists(_telecom, min_size=1, max_size=3),
        "address": st.lists(_address, min_size=1, max_size=3),
        "gender": st.sampled_from(["male", "female", "unknown"]),
        "birthDate": st.sampled_from(["1912-12-12", "1912-12-13"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(PRIORITY)), _copy), min_size=1, max_size=4))
def test_the_merge_never_loses_nor_invents_a_value(copies: list[tuple[str, dict[str, Any]]]) -> None:
    # (two copies from one source only happen by mistake; the merge must still keep both's values)
    group = [patient(src, **dict(fields)) for src, fields in copies]
    out = merge(group)
    assert len(out) == 1
    merged = out[0].resource
    validate(merged)
    for element in UNITED:
        held: dict[str, set[str]] = {}
        for src, fields in copies:
            for v in fields.get(element, []):
                held.setdefault(json.dumps(v, sort_keys=True), set()).add(src)
        got = [(json.dumps(bare(v), sort_keys=True), sources_of(v)) for v in merged.get(element, [])]
        assert [value for value, _ in got] == list(dict.fromkeys(value for value, _ in got))  # deduped
        assert {value: set(srcs) for value, srcs in got} == held  # none lost, none invented, sources right
        assert all(len(srcs) == len(set(srcs)) for _, srcs in got)
    best = sorted(copies, key=lambda c: PRIORITY[c[0]])
    for element in ("gender", "birthDate"):
        values = [fields[element] for _, fields in best if element in fields]
        assert merged.get(element) == (values[0] if values else None)


# ---- on the simulators' data -----------------------------------------------------------------------


def viva_phone(settings_: Any, pnr: str) -> str:
    return str(build_data(population(0, settings_.simulators.seed))[pnr]["brukare"]["telefon"])


@pytest.mark.parametrize("audience", ["homecare", "clinician"])
async def test_tolvans_viva_phone_reaches_care_in_the_merged_patient(
    facade: Any, settings: Any, audience: str
) -> None:
    phone = viva_phone(settings, TOLVAN.pnr)
    async with facade() as f:
        headers = auth(audience)
        read = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}", headers=headers)
        assert read.status == 200
        ev = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=headers)
        assert ev.status == 200
        bundle = await ev.json(content_type=None)
        [from_everything] = [
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
        ]
        for pat in (await read.json(content_type=None), from_everything):
            validate(pat)
            phones = [t for t in pat.get("telecom", []) if t["system"] == "phone"]
            assert [t["value"] for t in phones] == [phone]
            assert sources_of(phones[0]) == ["viva"]
            assert "cosmic" in pat["meta"]["source"]  # the priority source's copy leads
            assert pat["birthDate"] == "1912-12-12"  # Cosmic's, Viva has none
            [pnr_id] = [i for i in pat["identifier"] if i["value"] == TOLVAN.pnr]
            assert sorted(sources_of(pnr_id)) == ["cosmic", "viva"]


async def test_sanna_protected_identity_every_audience_and_endpoint(facade: Any) -> None:
    """Sanna Skyddad (protected identity): no care audience sees a name, address or telecom of any
    source — read, search, $everything — and the withheld name says masked; she sees her own."""
    masked = [{"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}]
    async with facade() as f:
        for audience in AUDIENCES:
            headers = auth("patient", pnr=SANNA.pnr) if audience == "patient" else auth(audience)
            got = []
            read = await f.client.get(f"{BASE}/Patient/{pid(SANNA.pnr)}", headers=headers)
            assert read.status == 200
            got.append(("read", await read.text()))
            search = await f.client.get(f"{BASE}/Patient", params={"identifier": SANNA.pnr}, headers=headers)
            assert search.status == 200
            got.append(("search", await search.text()))
            ev = await f.client.get(f"{BASE}/Patient/{pid(SANNA.pnr)}/$everything", headers=headers)
            assert ev.status == 200
            got.append(("$everything", await ev.text()))
            for where, text in got:
                body = json.loads(text)
                pats = (
                    [body]
                    if body["resourceType"] == "Patient"
                    else [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Patient"]
                )
                assert len(pats) == 1, where
                [pat] = pats
                validate(pat)
                if audience == "patient":
                    assert pat["name"][0]["family"] == SANNA.family
                    continue
                for secret in (SANNA.family, SANNA.given, SANNA.address[0], SANNA.address[2]):
                    assert secret not in text, (audience, where, secret)
                assert "telecom" not in pat and "address" not in pat and "contact" not in pat, (
                    audience,
                    where,
                )
                assert pat["name"] == masked, (audience, where)
                assert any(i["value"] == SANNA.pnr for i in pat["identifier"])


def test_a_label_from_the_lower_priority_source_protects_every_sources_identity(settings: Any) -> None:
    """Viva says skyddad identitet, Cosmic does not (yet): Cosmic's name and address go too."""
    viva, cosmic = cosmic_and_viva()
    viva = viva._replace(resource={**viva.resource, "meta": {**viva.resource["meta"], "security": [R]}})
    merged = merge([viva, cosmic])
    policy = compile_policy(settings.policy)
    for audience in CARE_AUDIENCES:
        [shown] = redact(merged, policy, audience)
        validate(shown)
        assert not {"telecom", "address"} & shown.keys()
        assert "Tolvansson" not in json.dumps(shown) and "Tolvgatan" not in json.dumps(shown)


def test_a_disagreement_about_a_withheld_element_is_withheld_too(settings: Any) -> None:
    """A deployment that also withholds birthDate of a protected patient: another source's differing
    birthDate, which the merge shows as a disagreement, goes with it."""
    viva, cosmic = cosmic_and_viva()
    cosmic = cosmic._replace(
        resource={**cosmic.resource, "meta": {**cosmic.resource["meta"], "security": [R]}}
    )
    viva = viva._replace(resource={**viva.resource, "birthDate": "1912-12-13", "gender": "unknown"})
    merged = merge([viva, cosmic])
    section = {
        **settings.policy,
        "protected_identity": {**settings.policy["protected_identity"], "elements": [*IDENTITY, "birthDate"]},
    }
    policy = compile_policy(section)
    [shown] = redact(merged, policy, "homecare")
    validate(shown)
    text = json.dumps(shown)
    assert "birthDate" not in text and "1912-12-1" not in text
    # a disagreement about an element that is shown stays
    [noted] = [e for e in shown["extension"] if e["url"] == DISAGREEMENT_EXTENSION]
    assert {s["url"]: s for s in noted["extension"]}["element"]["valueString"] == "gender"
