"""Parse a FHIR REST request into a ``Query``: the first stage of the walk, 400 on bad input.

Unknown parameters are ignored, as the FHIR spec allows, and left out of the ``self`` link so the
client sees what was applied; with ``Prefer: handling=strict`` they are a 400 instead. Unsupported
modifiers (``code:not``) and comparators (``ap``) are always a 400: ignoring them would silently
change the meaning of the search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from proxy import pnr as pnr_mod
from proxy.fhir.errors import FhirError, bad_request, not_found
from proxy.fhir.ids import PatientIds, is_fhir_id, patient_part
from proxy.fhir.searchparams import BY_TYPE, params_for
from proxy.settings import FacadeSettings
from proxy.timeutil import fhir_range
from proxy.types import DateParam, PatientRef, Query, SearchFilter, TokenParam

SUPPORTED_TYPES = frozenset(BY_TYPE)
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
# Parameters with a meaning for every search, handled here rather than by the type's table.
_RESULT_PARAMS = {"_count", "_offset", "_summary", "_total", "_format", "_pretty", "_page_token"}
_UINT = re.compile(r"[0-9]{1,9}")
# Refused outright rather than ignored: each reaches across resources, and a client should not get a
# result that silently differs from what it asked for.
_REFUSED = frozenset({"_include", "_revinclude", "_has", "_contained", "_containedType"})
_PATIENT_KEYS = ("patient", "subject", "patient:Patient", "subject:Patient")
_SPLIT_COMMA = re.compile(r"(?<!\\),")
_SPLIT_PIPE = re.compile(r"(?<!\\)\|")

Params = Sequence[tuple[str, str]]


class _Parser:
    def __init__(self, params: Params, settings: FacadeSettings, strict: bool) -> None:
        self.params = list(params)
        self.settings = settings
        self.strict = strict
        self.used: list[tuple[str, str]] = []

    def ignore(self, name: str) -> None:
        if self.strict:
            raise bad_request(f"Unknown or unsupported search parameter '{name}'")

    def single(self, name: str) -> str | None:
        values = [v for k, v in self.params if k == name]
        if len(values) > 1:
            raise bad_request(f"Parameter '{name}' may appear only once")
        return values[0] if values else None

    def result_params(self) -> tuple[int, int, bool]:
        for key, _ in self.params:
            name, _, modifier = key.partition(":")
            if modifier and name in _RESULT_PARAMS:
                raise bad_request(f"'{name}' takes no modifier")
            if name in _REFUSED:
                raise bad_request(f"'{name}' is not supported by this server")
        count = self.settings.default_count
        raw = self.single("_count")
        if raw is not None:
            if not _UINT.fullmatch(raw):
                raise bad_request("_count must be a non-negative integer")
            count = min(int(raw), self.settings.max_count)
            self.used.append(("_count", str(count)))
        offset = 0
        raw = self.single("_offset")
        if raw is not None:
            if not _UINT.fullmatch(raw):
                raise bad_request("_offset must be an integer from 0 to 999999999")
            offset = int(raw)
        summary = self.single("_summary")
        summary_count = False
        if summary is not None:
            if summary not in ("count", "false"):
                raise bad_request("_summary supports 'count' and 'false'")
            summary_count = summary == "count"
            self.used.append(("_summary", summary))
        total = self.single("_total")
        if total is not None and total not in ("none", "estimate", "accurate"):
            raise bad_request("_total must be one of none, estimate, accurate")
        return count, offset, summary_count


def parse_patient_param(value: str, ids: PatientIds) -> PatientRef | None:
    """``Patient/<id>``, ``<id>`` or ``<base>/Patient/<id>`` → the patient, None if no such id."""
    if "," in value:
        raise bad_request("Search one patient at a time: 'patient' takes a single value")
    ref = value.rstrip("/")
    if "/" in ref:
        head, _, ref = ref.rpartition("/")
        if not head.endswith("Patient"):
            raise bad_request("'patient' must reference a Patient")
    if not is_fhir_id(ref):
        raise bad_request("'patient' is not a valid resource id")
    return ids.resolve(ref)


def _unescape(s: str) -> str:
    """A token's escaped `|`, `,` and `$` back to plain characters (a def, so it is typed)."""
    return s.replace("\\|", "|").replace("\\,", ",").replace("\\$", "$")


def _token(raw: str, name: str) -> TokenParam:
    parts = _SPLIT_PIPE.split(raw)
    if len(parts) > 2:
        raise bad_request(f"'{name}' value has more than one '|'")
    if len(parts) == 1:
        if not raw:
            raise bad_request(f"'{name}' needs a value")
        return TokenParam(system=None, code=_unescape(raw))
    system, code = _unescape(parts[0]), _unescape(parts[1])
    if not system and not code:
        raise bad_request(f"'{name}' value '|' names neither system nor code")
    # "|code" means a code with no system; "system|" any code in the system
    return TokenParam(system=system if system else "", code=code if code else None)


def _date(raw: str, name: str) -> DateParam:
    prefix = "eq"
    if raw[:2].isalpha():
        prefix, raw = raw[:2], raw[2:]
        if prefix == "ap":
            raise bad_request(f"'{name}': the 'ap' prefix is not supported")
        if prefix not in DATE_PREFIXES:
            raise bad_request(f"'{name}': unknown prefix '{prefix}'")
    try:
        lo, hi = fhir_range(raw)
    except ValueError:
        raise bad_request(
            f"'{name}': '{raw}' is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or dateTime)"
        ) from None
    return DateParam(prefix=prefix, lo=lo, hi=hi)


def _filters(p: _Parser, rtype: str, skip: Iterable[str]) -> list[SearchFilter]:
    defs = params_for(rtype)
    filters = []
    skip = set(skip) | _RESULT_PARAMS
    for key, raw in p.params:
        name, _, modifier = key.partition(":")
        if name in skip:
            continue
        d = defs.get(name)
        if d is None:
            p.ignore(key)
            continue
        if modifier:
            raise bad_request(f"Modifier ':{modifier}' is not supported on '{name}'")
        values = [v for v in _SPLIT_COMMA.split(raw)]
        if not all(values):
            raise bad_request(f"'{name}' has an empty value")
        if d.kind == "token":
            parsed: tuple[TokenParam | DateParam, ...] = tuple(_token(v, name) for v in values)
        else:
            parsed = tuple(_date(v, name) for v in values)
        filters.append(SearchFilter(name=name, kind=d.kind, values=parsed))
        p.used.append((name, raw))
    return filters


def named_patient(rtype: str, params: Params, ids: PatientIds) -> PatientRef | None:
    """The patient a search names, read leniently: for a search refused as malformed, so that the
    refusal is logged against the patient it named. The first value, in a form this server reads,
    that is one of our patient ids (``patient``/``subject``; for Patient ``_id`` or ``identifier``);
    else None."""
    keys = ("_id", "identifier") if rtype == "Patient" else _PATIENT_KEYS
    for key, value in params:
        if key not in keys:
            continue
        try:
            if key == "identifier":
                number = pnr_mod.normalise(_token(value, key).code or "")
                patient = ids.patient(number) if number else None
            else:
                patient = parse_patient_param(value, ids)
        except FhirError:
            continue
        if patient is not None:
            return patient
    return None


def check_type(rtype: str) -> None:
    if rtype not in SUPPORTED_TYPES:
        raise not_found(f"Resource type '{rtype}' is not supported by this server")


def parse_search(
    rtype: str, params: Params, ids: PatientIds, settings: FacadeSettings, *, strict: bool = False
) -> Query:
    """A type search. ``Query.patient`` is None when it can match nothing (an id that is not ours)."""
    check_type(rtype)
    p = _Parser(params, settings, strict)
    count, offset, summary_count = p.result_params()
    if rtype == "Patient":
        patient, filters = _patient_search(p, ids)
    else:
        patient, filters = _subject_search(p, rtype, ids)
    return Query(
        interaction="search-type",
        resource_types=frozenset({rtype}),
        patient=patient,
        filters=tuple(filters),
        count=count,
        offset=offset,
        summary_count=summary_count,
        used_params=tuple(p.used),
        page_token=p.single("_page_token"),
    )


def _subject_search(p: _Parser, rtype: str, ids: PatientIds) -> tuple[PatientRef | None, list[SearchFilter]]:
    """A search of a clinical type: ``patient`` (or ``subject``) is required."""
    for key, _ in p.params:
        if key.partition(":")[0] in ("patient", "subject") and key not in _PATIENT_KEYS:
            raise bad_request(f"'{key}': only the ':Patient' modifier is supported on the patient")
    patient_values = [(k, v) for k, v in p.params if k in _PATIENT_KEYS]
    if not patient_values:
        raise bad_request(f"Searching {rtype} requires the 'patient' parameter")
    if len(patient_values) > 1:
        raise bad_request("Give the patient once, as 'patient' or 'subject'")
    _, value = patient_values[0]
    patient = parse_patient_param(value, ids)
    filters = _filters(p, rtype, skip=set(_PATIENT_KEYS))
    p.used.insert(0, ("patient", value))
    return patient, filters


def _patient_search(p: _Parser, ids: PatientIds) -> tuple[PatientRef | None, list[SearchFilter]]:
    """A Patient search: exactly one ``identifier`` (personnummer) or ``_id``."""
    identifiers = [v for k, v in p.params if k == "identifier"]
    id_values = [v for k, v in p.params if k == "_id"]
    if any(k.startswith(("identifier:", "_id:")) for k, _ in p.params):
        raise bad_request("Modifiers are not supported on 'identifier' or '_id'")
    if len(identifiers) + len(id_values) != 1:
        raise bad_request("Search Patient by exactly one 'identifier' (personnummer) or '_id'")
    filters = _filters(p, "Patient", skip={"identifier", "_id"})
    if id_values:
        raw = id_values[0]
        if "," in raw or not is_fhir_id(raw):
            raise bad_request("'_id' must be a single resource id")
        patient = ids.resolve(raw)
        p.used.insert(0, ("_id", raw))
    else:
        raw = identifiers[0]
        if _SPLIT_COMMA.search(raw):
            raise bad_request("Search one identifier at a time")
        token = _token(raw, "identifier")
        if token.system not in (None, *pnr_mod.IDENTIFIER_SYSTEMS):
            raise bad_request(
                "'identifier' system must be " + " or ".join(sorted(pnr_mod.IDENTIFIER_SYSTEMS))
            )
        if token.code is None:
            raise bad_request("'identifier' needs a personnummer value")
        number = pnr_mod.normalise(token.code)
        if number is None:
            raise bad_request(
                "'identifier' value is not a valid personnummer or samordningsnummer (12 digits)"
            )
        if token.system and token.system != pnr_mod.system_of(number):
            patient = None  # a personnummer under the samordningsnummer system (or vice versa)
        else:
            patient = ids.patient(number)
        p.used.insert(0, ("identifier", raw))
    return patient, filters


def parse_read(rtype: str, rid: str, ids: PatientIds) -> Query:
    """A read by id; 404 when the id cannot be one of ours."""
    check_type(rtype)
    if not is_fhir_id(rid):
        raise bad_request("Not a valid resource id")
    patient = ids.resolve(rid if rtype == "Patient" else patient_part(rid))
    if patient is None or (rtype == "Patient" and rid != patient.fhir_id):
        raise not_found(f"No {rtype} with that id is known")
    return Query(
        interaction="read",
        resource_types=frozenset({rtype}),
        patient=patient,
        resource_id=rid,
        count=1,
    )


def _operation_patient(rid: str, ids: PatientIds) -> PatientRef:
    """The patient of ``Patient/{rid}/$operation``: 400 for what is no id, 404 for an unknown one."""
    if not is_fhir_id(rid):
        raise bad_request("Not a valid resource id")
    patient = ids.resolve(rid)
    if patient is None:
        raise not_found("No Patient with that id is known")
    return patient


def parse_everything(
    rid: str, params: Params, ids: PatientIds, settings: FacadeSettings, *, strict: bool = False
) -> Query:
    """``Patient/{id}/$everything`` with ``_type``, ``_since``, ``_count``."""
    patient = _operation_patient(rid, ids)
    p = _Parser(params, settings, strict)
    count, offset, summary_count = p.result_params()
    types = set(SUPPORTED_TYPES)
    raw_types = p.single("_type")
    if raw_types is not None:
        asked = [t.strip() for t in raw_types.split(",")]
        unknown = [t for t in asked if t not in SUPPORTED_TYPES]
        if unknown or not asked:
            raise bad_request(f"_type: unsupported resource type(s): {', '.join(unknown) or '(empty)'}")
        types = set(asked)
        p.used.append(("_type", ",".join(asked)))
    since = None
    raw_since = p.single("_since")
    if raw_since is not None:
        try:
            since = fhir_range(raw_since)[0]
        except ValueError:
            raise bad_request("_since must be a FHIR instant, e.g. 2024-01-01T00:00:00+01:00") from None
        p.used.append(("_since", raw_since))
    for key, _ in p.params:
        if key not in ("_type", "_since") and key not in _RESULT_PARAMS:
            p.ignore(key)
    return Query(
        interaction="everything",
        resource_types=frozenset(types),
        patient=patient,
        since=since,
        count=count,
        offset=offset,
        summary_count=summary_count,
        used_params=tuple(p.used),
        page_token=p.single("_page_token"),
    )


def parse_summary(
    rid: str,
    params: Params,
    ids: PatientIds,
    types: frozenset[str],
    settings: FacadeSettings,
    *,
    strict: bool = False,
) -> Query:
    """``Patient/{id}/$summary``: the IPS of the ``types`` its sections (and what they reference)
    need. It takes no parameters of its own (the IPS operation's ``identifier`` and ``profile`` are
    not supported): any is ignored, or a 400 under ``Prefer: handling=strict``."""
    patient = _operation_patient(rid, ids)
    p = _Parser(params, settings, strict)
    for key, _ in p.params:
        if key not in ("_format", "_pretty"):
            p.ignore(key)
    return Query(interaction="summary", resource_types=types & SUPPORTED_TYPES, patient=patient, count=0)


def parse_stored_search(
    rtype: str,
    params: Params,
    ids: PatientIds,
    settings: FacadeSettings,
    *,
    codes: dict[str, frozenset[str]],
    strict: bool = False,
) -> tuple[Query, dict[str, frozenset[str]]]:
    """A search of a resource the facade itself stores (Consent, AuditEvent): ``patient`` is
    required; ``codes`` names the token parameters it supports and their values. Returns the query
    and, per token parameter given, the values asked for (OR-ed)."""
    p = _Parser(params, settings, strict)
    count, offset, summary_count = p.result_params()
    raw = p.single("patient")
    if raw is None:
        raise bad_request(f"Searching {rtype} needs the 'patient' parameter")
    patient = parse_patient_param(raw, ids)
    p.used.append(("patient", raw))
    wanted: dict[str, frozenset[str]] = {}
    for name, allowed in codes.items():
        value = p.single(name)
        if value is None:
            continue
        values = frozenset(v.strip() for v in value.split(","))
        if not values <= allowed:
            raise bad_request(f"'{name}' takes one or more of: {', '.join(sorted(allowed))}")
        wanted[name] = values
        p.used.append((name, value))
    for key, _ in p.params:
        if key not in ("patient", *codes, *_RESULT_PARAMS):
            p.ignore(key)
    return (
        Query(
            interaction="search-type",
            resource_types=frozenset({rtype}),
            patient=patient,
            count=count,
            offset=offset,
            summary_count=summary_count,
            used_params=tuple(p.used),
        ),
        wanted,
    )
