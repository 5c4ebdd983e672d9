"""Look-alike records from different producers: signposted as *possible* duplicates, never merged.

``proxy.merge`` merges only what the producer says is one fact (the same origin). Two producers
holding what looks like the same fact — Lennart's furosemide in Cosmic and in NPÖ, one inpatient
stay recorded by two regions, Tolvan's ramipril on Cosmic's prescription list and Viva's home-care
list — stay two resources, each as its source gave it. This stage only links them, so a reader sees
that they may be one fact and can compare them.

**Where it runs.** After PDL and after redaction, over the resources this asker may see and nothing
else (the walk's ``lookalikes`` stage: ``proxy.pipeline.walk``): a mark never names, counts or
hints at a record the asker cannot see — a look-alike whose twin is withheld carries no mark. It
runs before the query's filters and paging, so a resource carries the same marks whatever the
filters, ``_type``, page or read.

**The rule.** Two resources are possible duplicates of each other when all of these hold:

* the same resource type, one of ``COVERED``; the same ``subject``; different producers (the
  producing system of their origin, as each mapping declares it — records of one producer are that
  producer's separate records, and one fact held twice by one producer is already merged);
* neither is ``entered-in-error`` (status, or for a Condition its verificationStatus);
* the same code, compared by system and code: they share at least one code system in the type's
  code (below) and, for every system both carry, the same set of codes;
* overlapping periods (below): each has a readable start; a missing end is "still going on"; an
  end that is a date includes that whole day (FHIR's Period.end), an end with a time is the instant
  the period ends — one stay ending as the next begins (a transfer) does not overlap it;
* the type's own comparison (below), on what both have (what only one has is not compared).

Per type:

============================ =============================== =========================================
type                         code                            period; also compared
============================ =============================== =========================================
``MedicationStatement``      ``medicationCodeableConcept``   ``effectivePeriod`` (or
                             (ATC, and NPL where both have   ``effectiveDateTime``); the dose (below)
                             it); a ``medicationReference``
                             is never compared
``Encounter``                ``class``; ``type`` codings     ``period``
                             where both have a system
``Condition``                ``code`` (ICD-10-SE)            ``onset[x]`` to ``abatementDateTime`` (an
                                                             abatement in another form: not compared);
                                                             ``clinicalStatus`` where both have one
============================ =============================== =========================================

**The dose** (MedicationStatement), compared where both have it:

* the strength in the product name (``medicationCodeableConcept.text``: "5 mg", "0,1 mg/dos"),
  where both name one: the same;
* ``dosage[].doseAndRate``, where both have one: equal;
* ``dosage[].text``, where both have one: equal after folding case and spaces, or both read by the
  small Swedish dose grammar below to the same amount, unit and doses per day — "1 tablett 1 gång
  dagligen", "1 tablett kl 08" and "1 tablett på morgonen" are one tablet once a day; "1 tablett
  2 gånger dagligen" is not. A text the grammar does not read ("1-2 doser vid behov", "… i 5
  dagar") matches only the same text.

Anything the rule cannot read — no start, an unreadable date, no shared code system — is not
compared: the resource is shown unmarked (conservative: every false "possible duplicate" teaches a
clinician to ignore the mark). The rule and its reasons: mappings/README.md, "Possible duplicates".

**The marks.** Each resource gets, for each look-alike (pairwise: a mark never follows a chain to a
resource that does not itself match), an extension ``POSSIBLE_DUPLICATE`` with a ``valueReference``
to it, and one ``meta.tag`` ``POSSIBLE_DUPLICATE`` per source those look-alikes come from (code: the
source). Marks are symmetric, sorted, and depend on nothing but the visible resources: the same
answer gives the same marks. Nothing else changes — not the id, not a clinical element; the input
is not modified (it may be shared with the cache).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from proxy.fhir.marks import POSSIBLE_DUPLICATE
from proxy.slack import Steps, at_once, in_turns, slice_ends
from proxy.timeutil import fhir_range
from proxy.types import FhirDict, MappedResource

COVERED = ("Condition", "Encounter", "MedicationStatement")
TAG_DISPLAY = "Possible duplicate: a record from this source looks the same (not merged)"

Codes = dict[str, frozenset[str]]  # system -> codes


class _Facts(NamedTuple):
    key: str  # "<type>/<id>"
    source: str
    producer: str
    subject: str
    codes: Codes  # the type's code: at least one shared system needed
    extra_codes: Codes  # compared on the systems both have
    lo: float
    hi: float
    status: str | None  # Condition: clinicalStatus
    strength: tuple[str, ...]
    dose_texts: tuple[Any, ...]
    dose_quantities: tuple[str, ...]


def mark(kept: Iterable[MappedResource], shown: Sequence[FhirDict]) -> list[FhirDict]:
    """``shown`` (what the asker may see, in order) with its look-alikes marked; ``kept`` gives the
    source and producer of each (by type and id) and is never itself shown."""
    return at_once(_mark(kept, shown))


async def mark_in_turns(kept: Iterable[MappedResource], shown: Sequence[FhirDict]) -> list[FhirDict]:
    """``mark``, giving the event loop a turn between slices of a long history (``proxy.slack``)."""
    return await in_turns(_mark(kept, shown))


def _mark(kept: Iterable[MappedResource], shown: Sequence[FhirDict]) -> Steps[list[FhirDict]]:
    # (only the covered types can look alike: the rest — most of a long history, its lab results —
    # is neither keyed nor looked up)
    about: dict[str, MappedResource] = {}
    for n, mr in enumerate(kept):
        if slice_ends(n):
            yield
        if mr.resource.get("resourceType") in COVERED:
            about[_key(mr.resource)] = mr
    facts: dict[str, list[_Facts]] = {}
    for n, resource in enumerate(shown):
        if slice_ends(n):
            yield
        if resource.get("resourceType") not in COVERED:
            continue
        mapped = about.get(_key(resource))
        if mapped is None:
            continue
        found = _facts(resource, mapped)
        if found is not None:
            facts.setdefault(resource["resourceType"], []).append(found)
    twins: dict[str, list[_Facts]] = {}
    swept = 0
    for group in facts.values():
        # only resources sharing a code can match: compare within each (system, codes) bucket; and
        # only overlapping periods can match: within a bucket, in order of start, a resource is
        # compared with those starting before it ends (a sweep: near-linear over a long history,
        # where one bucket holds every ambulatory visit of ten years)
        buckets: dict[tuple[str, frozenset[str]], list[int]] = {}
        for i, f in enumerate(group):
            for system, codes in f.codes.items():
                buckets.setdefault((system, codes), []).append(i)
        compared: set[tuple[int, int]] = set()
        for members in buckets.values():
            members.sort(key=lambda i: group[i].lo)
            for n, i in enumerate(members):
                if slice_ends(swept):
                    yield
                swept += 1
                hi = group[i].hi
                for m in range(n + 1, len(members)):
                    j = members[m]
                    if group[j].lo >= hi:
                        break  # it, and every later one, starts after this one has ended
                    pair = (i, j) if i < j else (j, i)
                    if pair in compared:
                        continue
                    compared.add(pair)
                    a, b = group[pair[0]], group[pair[1]]
                    if look_alike(a, b):
                        twins.setdefault(a.key, []).append(b)
                        twins.setdefault(b.key, []).append(a)
    if not twins:
        return list(shown)
    out = []
    for n, r in enumerate(shown):
        if slice_ends(n):
            yield
        if r.get("resourceType") in COVERED and (key := _key(r)) in twins:
            out.append(_marked(r, twins[key]))
        else:
            out.append(r)
    return out


def look_alike(a: _Facts, b: _Facts) -> bool:
    return (
        a.producer != b.producer
        and a.subject == b.subject
        and _same_codes(a.codes, b.codes, needs_shared=True)
        and _same_codes(a.extra_codes, b.extra_codes, needs_shared=False)
        and a.lo < b.hi
        and b.lo < a.hi
        and _where_both(a.status, b.status)
        and _where_both(a.strength, b.strength)
        and _where_both(a.dose_texts, b.dose_texts)
        and _where_both(a.dose_quantities, b.dose_quantities)
    )


def _where_both(a: Any, b: Any) -> bool:
    return not a or not b or a == b


def _same_codes(a: Codes, b: Codes, *, needs_shared: bool) -> bool:
    shared = a.keys() & b.keys()
    if needs_shared and not shared:
        return False
    return all(a[s] == b[s] for s in shared)


def _key(resource: FhirDict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _marked(resource: FhirDict, twins: list[_Facts]) -> FhirDict:
    twins = sorted(twins, key=lambda t: t.key)
    out = dict(resource)
    meta = dict(out.get("meta", {}))
    tags = list(meta.get("tag", []))
    for source in sorted({t.source for t in twins}):
        tag = {"system": POSSIBLE_DUPLICATE, "code": source, "display": TAG_DISPLAY}
        if tag not in tags:
            tags.append(tag)
    meta["tag"] = tags
    out["meta"] = meta
    links = [{"url": POSSIBLE_DUPLICATE, "valueReference": {"reference": t.key}} for t in twins]
    out["extension"] = [*out.get("extension", []), *links]
    return out


# ---- reading a resource -------------------------------------------------------------------------


def _facts(r: FhirDict, mapped: MappedResource) -> _Facts | None:
    rtype = r["resourceType"]
    subject = (r.get("subject") or {}).get("reference")
    if not isinstance(subject, str) or not subject:
        return None
    extra: Codes = {}
    status = None
    strength: tuple[str, ...] = ()
    texts: tuple[Any, ...] = ()
    quantities: tuple[str, ...] = ()
    if rtype == "MedicationStatement":
        if r.get("status") == "entered-in-error" or "medicationCodeableConcept" not in r:
            return None
        concept = r["medicationCodeableConcept"]
        codes = _codes(concept)
        period = r.get("effectivePeriod") or {}
        start, end = period.get("start", r.get("effectiveDateTime")), period.get("end")
        strength = _strength(concept.get("text"))
        dosage = [d for d in r.get("dosage", []) if isinstance(d, dict)]
        texts = tuple(
            sorted((_dose_reading(d["text"]) for d in dosage if isinstance(d.get("text"), str)), key=repr)
        )
        quantities = tuple(sorted(_json(d["doseAndRate"]) for d in dosage if "doseAndRate" in d))
    elif rtype == "Encounter":
        if r.get("status") == "entered-in-error":
            return None
        codes = _codes({"coding": [r["class"]]} if isinstance(r.get("class"), dict) else {})
        extra = _codes(*(t for t in r.get("type", []) if isinstance(t, dict)))
        period = r.get("period") or {}
        start, end = period.get("start"), period.get("end")
    elif rtype == "Condition":
        if "entered-in-error" in _codes(r.get("verificationStatus") or {}).get(_VER_STATUS, ()):
            return None
        codes = _codes(r.get("code") or {})
        onset = r.get("onsetPeriod") or {}
        start = r.get("onsetDateTime", onset.get("start"))
        if any(k.startswith("abatement") and k != "abatementDateTime" for k in r):
            return None
        end = r.get("abatementDateTime")
        clinical = sorted(_codes(r.get("clinicalStatus") or {}).get(_CLINICAL, ()))
        status = clinical[0] if clinical else None
    else:
        return None
    if not codes or not isinstance(start, str) or (end is not None and not isinstance(end, str)):
        return None
    try:
        lo, first = fhir_range(start)
        # an end with a time is the instant the period ends (one ending as the next begins does
        # not overlap it); an end without one, a date, includes its whole day (FHIR: Period.end);
        # a period is at least its start
        hi = max(_end(end), first) if end else math.inf
    except ValueError:
        return None
    return _Facts(
        key=_key(r),
        source=mapped.source,
        producer=_producer(mapped),
        subject=subject,
        codes=codes,
        extra_codes=extra,
        lo=lo,
        hi=hi,
        status=status,
        strength=strength,
        dose_texts=texts,
        dose_quantities=quantities,
    )


def _end(value: str) -> float:
    lo, hi = fhir_range(value)
    return lo if "T" in value else hi


def _producer(mapped: MappedResource) -> str:
    """The producing system of the record's origin (``<type>|<producer>|<record id>``, as the mapping
    engine keys it); without one, the source."""
    origin = mapped.origin_key.removeprefix(f"{mapped.resource['resourceType']}|")
    producer, sep, _ = origin.partition("|")
    return producer if sep and producer else mapped.source


_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _codes(*concepts: Any) -> Codes:
    out: dict[str, set[str]] = {}
    for concept in concepts:
        for c in concept.get("coding", []) if isinstance(concept, dict) else ():
            if isinstance(c, dict) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
                out.setdefault(c["system"], set()).add(c["code"])
    return {s: frozenset(v) for s, v in out.items()}


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# ---- the dose -----------------------------------------------------------------------------------

_STRENGTH = re.compile(r"(\d+(?:[.,]\d+)?)\s*(mg|g|µg|mikrog|ml|mmol|ie|e)(/\w+)?(?![\w])")
_UNITS = {
    "tablett": "tablett",
    "tabletter": "tablett",
    "depottablett": "depottablett",
    "depottabletter": "depottablett",
    "kapsel": "kapsel",
    "kapslar": "kapsel",
    "dos": "dos",
    "doser": "dos",
    "ml": "ml",
    "droppe": "droppe",
    "droppar": "droppe",
}
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?) (" + "|".join(_UNITS) + r")(?: (.*))?")
_CLOCK = r"\d{1,2}(?:[.:]\d{2})?"
_TIMES = re.compile(rf"kl {_CLOCK}((?:(?:,| och) (?:kl )?{_CLOCK})*)")
_PER_DAY = re.compile(r"(\d+) (?:gång|gånger) (?:dagligen|per dag|om dagen)")
_ONCE = re.compile(r"(?:dagligen|per dag|(?:på )?morgonen|morgon|(?:på )?kvällen|kväll|till natten)")
_TWICE = re.compile(r"(?:på )?morgon och kväll")


def _strength(text: Any) -> tuple[str, ...]:
    if not isinstance(text, str):
        return ()
    return tuple(
        f"{float(n.replace(',', '.')):g} {unit}{per or ''}"
        for n, unit, per in _STRENGTH.findall(text.casefold())
    )


def _normal(text: str) -> str:
    text = " ".join(text.casefold().split()).rstrip(".")
    return re.sub(r"(\d),(\d)", r"\1.\2", text)


def _dose_reading(text: str) -> tuple[Any, ...]:
    """``("dose", amount, unit, per day)`` where the grammar reads the text, else ``("text", it)``."""
    norm = _normal(text)
    m = _AMOUNT.fullmatch(norm)
    if m is not None and m[3] is not None:
        per_day = _per_day(m[3])
        if per_day is not None:
            return ("dose", float(m[1]), _UNITS[m[2]], per_day)
    return ("text", norm)


def _per_day(rest: str) -> int | None:
    if m := _PER_DAY.fullmatch(rest):
        n = int(m[1])
        return n if n > 0 else None
    if _ONCE.fullmatch(rest):
        return 1
    if _TWICE.fullmatch(rest):
        return 2
    if m := _TIMES.fullmatch(rest):
        return 1 + len(re.findall(_CLOCK, m[1]))
    return None
