"""Typed, frozen settings compiled from ``config/*.yaml`` once at start-up.

A bad value fails here, naming the file and the key, never later on a request.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import yaml

from proxy.audience import DEFAULT_AUDIENCES, Audience, Audiences
from proxy.faultspec import Faults
from proxy.hsa import is_hsa_id
from proxy.types import SUPPORTED_TYPES

REPO_ROOT = Path(__file__).resolve().parent.parent
# An installed wheel has no checkout around it: its build copies config/ and mappings/ here
# (proxy/_build.py). A checkout's own config/ wins.
PACKAGED_DATA = Path(__file__).resolve().parent / "_data"
DEFAULT_CONFIG = next(
    (
        p
        for p in (REPO_ROOT / "config" / "facade.yaml", PACKAGED_DATA / "config" / "facade.yaml")
        if p.is_file()
    ),
    REPO_ROOT / "config" / "facade.yaml",
)
# the mappings that ship with the facade: what a config file without `mappings_dir` uses
DEFAULT_MAPPINGS = DEFAULT_CONFIG.parent.parent / "mappings"
PATIENT_ID_KEY_ENV = "FHIR_FACADE_PATIENT_ID_KEY"
# Public and dev-only: used by `fhir-facade demo` and the tests, never by `serve`.
DEMO_PATIENT_ID_KEY = b"demo-only-key-not-for-production"
DEFAULT_POSTGRES_DSN = "postgresql://fhir_facade@127.0.0.1:5432/fhir_facade"
METRICS_TOKEN_ENV = "FHIR_FACADE_METRICS_TOKEN"

_BACKEND_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class ConfigError(ValueError):
    """A configuration value that cannot be used. The message names the file and the key."""


@dataclass(frozen=True, slots=True)
class BackendSettings:
    name: str
    base_url: str
    mappings: str  # folder under the mappings dir
    source_uri: str
    simulator: str | None = None
    description: str = ""
    connect_timeout_s: float = 1.0
    total_timeout_s: float = 3.0
    limit_per_host: int = 100
    vars: tuple[tuple[str, str], ...] = ()
    breaker_failures: int = 5  # consecutive failed answers that open the circuit
    breaker_open_s: float = 10.0  # how long it stays open before one probe request
    # Holds PDL care documentation (the default): every mapping but Patient must name the record's
    # care provider, and a record whose provider comes out empty is withheld from care audiences.
    care_documentation: bool = True


@dataclass(frozen=True, slots=True)
class FacadeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/fhir"
    default_count: int = 50
    max_count: int = 500
    # An answer up to max_body_bytes is read whole and decoded in one go (the quick path); a larger
    # one is decoded and mapped as it arrives, record by record (proxy.mapping.stream), so memory
    # stays bounded per request however long the history; max_answer_bytes is the safety cap on one
    # answer: past it the rest is not read and the source is reported with part of its answer missing.
    max_body_bytes: int = 1024 * 1024
    max_answer_bytes: int = 256 * 1024 * 1024
    deadline_s: float = 5.0  # the whole fan-out: past it, answer with what has arrived
    # A search's date range sent to the backends whose mappings declare one (``request.filters``;
    # the facade still filters after). Off: every backend is asked for the whole list (the bench's
    # "before").
    pushdown: bool = True
    # Answers of at least map_from_bytes are mapped in map_workers processes beside the event loop
    # (proxy.mapping.pool), at a lower priority; 0 workers: every answer is mapped in the loop.
    map_workers: int = 0
    map_from_bytes: int = 256 * 1024
    # e.g. https://fhir.region.se/fhir; `serve` needs it (links are never built from the Host header)
    public_base_url: str | None = None


@dataclass(frozen=True, slots=True)
class CacheSettings:
    enabled: bool = True
    ttl_s: float = 30.0  # an answer is reused this long
    max_stale_s: float = 300.0  # and may stand in for a failing backend this much longer
    max_entries: int = 10_000  # per worker (backend × contract × patient); memory store
    # per worker, the memory store's entries together (an estimate of the memory they hold: see
    # proxy.cache.footprint); the least recently used go first, and an entry larger than this is
    # not kept at all
    max_bytes: int = 256 * 1024 * 1024
    store: str = "memory"  # "memory" (per worker) or "redis" (shared by workers and hosts)
    redis_url: str = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class PagingSettings:
    """Paging from snapshots (proxy/paging.py): the first page of an answer of several pages keeps
    the answer; the later pages are read from it, in the store the cache shares (Redis with
    ``cache.store: redis``, else ``store``)."""

    snapshots: bool = True  # false: every page walks again (offset links, no page token)
    snapshot_ttl_s: float = 300.0  # how long the later pages can be read


@dataclass(frozen=True, slots=True)
class EngagementSettings:
    enabled: bool = True
    ttl_s: float = 60.0  # how long "unknown patient here" is believed (at most 300 s)
    # never skipped, whatever the index holds: a query for any of these asks every source (a
    # threat flag or "Ej HLR" registered a minute ago must show)
    never_skip: frozenset[str] = frozenset({"Flag", "AllergyIntolerance"})


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    seed: int = 1177
    patients: int = 0
    faults: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Long histories (proxy/simulators/history.py): records per generated patient across the three
    # simulators, (n, n) or a (min, max) range drawn per patient; (0, 0): the small default histories.
    records: tuple[int, int] = (0, 0)
    years: int = 10  # how far back a long history reaches
    # each simulator keeps the patients it has generated, up to this many records (least recently
    # used dropped; a patient asked for again is generated again, the same)
    cached_records: int = 250_000
    # long answers kept once rendered, up to this many bytes per simulator (0: each rendered anew;
    # proxy/simulators/rendered.py)
    render_cache_bytes: int = 0


MAX_RECORDS = 1_000_000  # per patient


def simulator_records(value: Any) -> tuple[int, int]:
    """``simulators.records`` (and ``--records``): N, or a range [min, max] / "min-max" with
    1 ≤ min ≤ max. Raises ValueError."""
    if isinstance(value, str):
        parts = value.split("-")
        if not 1 <= len(parts) <= 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError("expects N or MIN-MAX")
        value = [int(p) for p in parts] if len(parts) == 2 else int(parts[0])
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_RECORDS:
            raise ValueError(f"expects 0 to {MAX_RECORDS} records")
        return value, value
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 1 <= value[0] <= value[1] <= MAX_RECORDS
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"expects a number of records, or a range [min, max] with 1 ≤ min ≤ max ≤ {MAX_RECORDS}")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where the access log and the consents live (proxy/store)."""

    kind: str = "sqlite"  # sqlite | postgres
    sqlite_path: Path = field(default_factory=lambda: REPO_ROOT / "var" / "facade.sqlite")
    postgres_dsn: str = DEFAULT_POSTGRES_DSN


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``/metrics`` (proxy/metrics.py) and the access log (proxy/accesslog.py)."""

    enabled: bool = True
    # the bearer token a scraper sends (from FHIR_FACADE_METRICS_TOKEN; never a FHIR token)
    token: str | None = field(default=None, repr=False)
    # without a token: let a peer on the loopback address in (not behind a proxy on the same host)
    allow_unauthenticated_loopback: bool = False
    access_log: bool = True  # one JSON line per request (logger fhir_facade.access, INFO)
    log_format: str = "text"  # "json": every log line a JSON object, not only the access log's


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP edge (proxy/edge): CORS for the configured origins, gzip."""

    cors_allow_origins: tuple[str, ...] = ()  # e.g. https://www.1177.se; none: no CORS headers at all
    cors_max_age_s: int = 600  # how long a browser may reuse a preflight's answer
    gzip: bool = True  # when the client accepts it
    gzip_min_bytes: int = 1024  # smaller answers are sent as they are


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """Admission control per worker (proxy/edge/admission.py): how many requests are worked on at
    once, how many more may wait and how long; beyond that, 503 with Retry-After."""

    enabled: bool = True
    max_in_flight: int = 64  # (the bench's closed model runs 32 workers; the tests at most 64 at once)
    max_queue: int = 64
    max_wait_s: float = 1.0
    retry_after_s: int = 1  # what a refused client is told to wait


# What a client may write through the facade (issue 22: a home visit documented once): these types.
WRITABLE_TYPES = ("Encounter", "Observation", "DocumentReference", "MedicationAdministration")


@dataclass(frozen=True, slots=True)
class WritesSettings:
    """Who may write which types, and to which backends (``writes.policy``): audience → type →
    targets. Fail closed: an audience or type not listed writes nothing, and the patient's audience
    can be given nothing (the patient writes no clinical data)."""

    policy: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()

    def targets(self, audience: str, resource_type: str) -> tuple[str, ...]:
        """The backends a resource of ``resource_type`` written by ``audience`` goes to (none: refused)."""
        for name, types in self.policy:
            if name == audience:
                return next((targets for t, targets in types if t == resource_type), ())
        return ()


# Of an outbox lease, what one request may take (the rest: renewing the lease, or recording the outcome)
LEASE_USE = 0.9


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """The outbox of accepted writes (proxy/store) and the workers that deliver it to the targets."""

    # a claimed part is its worker's this long; then another may take it (the worker died). Longer
    # than any one delivery takes, or a slow one is sent twice (the idempotency key makes it harmless)
    lease_s: float = 60.0
    claim_limit: int = 16  # parts a worker claims at once
    max_attempts: int = 10  # tries of a part that keeps failing for a while, then it is parked
    backoff_base_s: float = 1.0  # the wait after the first failed try (at most: full jitter)
    backoff_cap_s: float = 300.0  # the longest wait between tries
    poll_s: float = 1.0  # how often an idle worker looks for due parts
    wait_s: float = 2.0  # how long a POST waits for every target before it answers 202 (0: at once)


# The backend var naming the ambulance service whose care unit the threat mapping gives every flag.
THREAT_UNIT_VAR = "ambulance_service_hsa_id"


@dataclass(frozen=True, slots=True)
class ThreatRegister:
    """Who owns the ambulance threat register ("Hot"): the ambulance service as a whole, not the
    station that recorded a threat. Care staff of ``audiences`` at ``care_provider`` work for that
    service, so for them its records (unit ``care_unit``) are their own unit's: a patient's block on
    the service, or on any one station, does not hide the threat flag from another station's crew."""

    care_unit: str  # HSA-id of the ambulance service: the threat flag's care unit
    care_provider: str  # HSA-id of its care provider
    audiences: frozenset[str] = frozenset({"ambulance"})  # who works for the service


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """PDL rules that are the deployment's to set (proxy/access)."""

    # (who may use emergency access, nödöppning: ``Audience.emergency_allowed``, from
    # access.emergency_audiences)
    # user HSA-ids that may read any patient's whole access log (GET AuditEvent)
    auditors: frozenset[str] = frozenset()
    # HSA-id → name of care providers and units, for the patient's view of the access log
    directory: tuple[tuple[str, str], ...] = ()
    threat_register: ThreatRegister | None = None  # None: the threat flag follows the plain PDL rules


@dataclass(frozen=True, slots=True)
class Settings:
    facade: FacadeSettings
    backends: tuple[BackendSettings, ...]
    mappings_dir: Path
    source_priority: tuple[str, ...]
    simulators: SimulatorSettings = field(default_factory=SimulatorSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    engagement: EngagementSettings = field(default_factory=EngagementSettings)
    patient_id_key: bytes | None = None
    # The raw ``auth`` and ``policy`` sections; proxy.auth and proxy.redact compile them at start-up.
    auth: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    config_dir: Path = field(default_factory=lambda: DEFAULT_CONFIG.parent)
    store: StoreSettings = field(default_factory=StoreSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    # the client audiences (``audiences:`` and ``access.emergency_audiences``), by name
    audiences: Audiences = DEFAULT_AUDIENCES
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    paging: PagingSettings = field(default_factory=PagingSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    writes: WritesSettings = field(default_factory=WritesSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)

    def backend(self, name: str) -> BackendSettings:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def without_care_documentation(self) -> frozenset[str]:
        """The backends declared as holding no PDL care documentation (``care_documentation: false``)."""
        return frozenset(b.name for b in self.backends if not b.care_documentation)

    def with_backend_urls(self, urls: dict[str, str]) -> Settings:
        return replace(
            self, backends=tuple(replace(b, base_url=urls.get(b.name, b.base_url)) for b in self.backends)
        )


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {message}")

    def section(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.fail(key, "expects a mapping")
        unknown = set(data) - allowed
        if unknown:
            raise self.fail(key, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return data

    def number(
        self, data: dict[str, Any], key: str, where: str, default: float, lo: float, hi: float
    ) -> float:
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise self.fail(f"{where}.{key}", f"expects a number between {lo} and {hi}")
        return float(v)

    def integer(self, data: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(f"{where}.{key}", f"expects an integer between {lo} and {hi}")
        return v


def _store_file(config: Path, given: str, env: dict[str, str]) -> Path:
    """The SQLite file: relative to the config file's folder, except for the default config shipped
    inside an installed wheel (site-packages is no place for the access log): there, the file's name
    in ``$XDG_STATE_HOME/fhir-facade`` (``~/.local/state/fhir-facade/facade.sqlite``)."""
    if Path(given).is_absolute() or not config.resolve().is_relative_to(PACKAGED_DATA):
        return (config.parent / given).resolve()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).resolve() / "fhir-facade" / Path(given).name


# libyaml's loader where PyYAML has it (its wheels do): the same documents, parsed ~10x faster — the
# mappings, the config and the simulators' data are read at every start, by every worker
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(stream: str | IO[str]) -> Any:
    """``yaml.safe_load``, with libyaml's parser when PyYAML was built with it."""
    return yaml.load(stream, Loader=_YAML_LOADER)


def load_settings(path: Path | str | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read and validate a config file (default ``config/facade.yaml``)."""
    path = Path(path) if path else DEFAULT_CONFIG
    env = dict(os.environ) if env is None else env
    r = _Reader(path.name)
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML: {exc}") from None
    top = r.section(
        doc,
        "(top)",
        {
            "facade",
            "mappings_dir",
            "merge",
            "backends",
            "simulators",
            "cache",
            "engagement",
            "auth",
            "policy",
            "store",
            "access",
            "metrics",
            "http",
            "audiences",
            "paging",
            "admission",
            "writes",
            "outbox",
        },
    )

    f = r.section(
        top.get("facade"),
        "facade",
        {
            "host",
            "port",
            "base_path",
            "default_count",
            "max_count",
            "max_body_bytes",
            "max_answer_bytes",
            "public_base_url",
            "deadline_s",
            "pushdown",
            "map_workers",
            "map_from_bytes",
        },
    )
    raw_base = f.get("base_path", "/fhir")
    if not isinstance(raw_base, str) or not raw_base.startswith("/"):
        raise r.fail("facade.base_path", "expects a path starting with / (use / to serve at the root)")
    base_path = raw_base.rstrip("/")
    public = f.get("public_base_url")
    if public is not None and (not isinstance(public, str) or not re.match(r"^https?://[^/]+", public)):
        raise r.fail("facade.public_base_url", "expects an http(s) URL such as https://fhir.example.se/fhir")
    max_count = r.integer(f, "max_count", "facade", 500, 1, 100_000)
    max_body = r.integer(f, "max_body_bytes", "facade", 1024 * 1024, 1024, 1 << 31)
    max_answer = r.integer(f, "max_answer_bytes", "facade", max(256 * 1024 * 1024, max_body), 1024, 1 << 34)
    if max_answer < max_body:
        raise r.fail("facade.max_answer_bytes", "expects at least facade.max_body_bytes")
    if not isinstance(f.get("pushdown", True), bool):
        raise r.fail("facade.pushdown", "expects true or false")
    facade = FacadeSettings(
        host=str(f.get("host", "127.0.0.1")),
        port=r.integer(f, "port", "facade", 8080, 0, 65535),
        base_path=base_path,
        default_count=r.integer(f, "default_count", "facade", 50, 1, max_count),
        max_count=max_count,
        max_body_bytes=max_body,
        max_answer_bytes=max_answer,
        public_base_url=public.rstrip("/") if public else None,
        deadline_s=r.number(f, "deadline_s", "facade", 5.0, 0.05, 300),
        pushdown=f.get("pushdown", True),
        map_workers=r.integer(f, "map_workers", "facade", 0, 0, 64),
        map_from_bytes=r.integer(f, "map_from_bytes", "facade", 256 * 1024, 0, 1 << 34),
    )

    backends_doc = top.get("backends")
    if not isinstance(backends_doc, dict) or not backends_doc:
        raise r.fail("backends", "expects at least one backend")
    backends = []
    for name, b in backends_doc.items():
        where = f"backends.{name}"
        if not isinstance(name, str) or not _BACKEND_NAME.match(name):
            raise r.fail(where, "a backend name is 1-12 lower-case letters/digits, starting with a letter")
        if isinstance(b, dict) and "empty_statuses" in b:  # (fail closed: a 404 is not "nothing")
            raise r.fail(
                f"{where}.empty_statuses",
                "is no longer supported: a status alone does not say a patient is unknown. Declare "
                "it on the backend's patient lookup, in its mapping's request.unknown_patient "
                "(status and body marker; see mappings/README.md); every other non-2xx is a failure",
            )
        b = r.section(
            b,
            where,
            {
                "description",
                "base_url",
                "simulator",
                "mappings",
                "source_uri",
                "timeout",
                "limit_per_host",
                "vars",
                "breaker",
                "care_documentation",
            },
        )
        url = b.get("base_url")
        if not isinstance(url, str) or not re.match(r"^https?://[^?#]+$", url):
            raise r.fail(f"{where}.base_url", "expects an http(s) URL, without a query or fragment")
        t = r.section(b.get("timeout"), f"{where}.timeout", {"connect_s", "total_s"})
        br = r.section(b.get("breaker"), f"{where}.breaker", {"failures", "open_s"})
        vars_ = b.get("vars", {}) or {}
        if not isinstance(vars_, dict):
            raise r.fail(f"{where}.vars", "expects a mapping of name: value")
        for k, v in vars_.items():
            if not isinstance(v, str | int) or isinstance(v, bool) or str(v) == "":
                raise r.fail(f"{where}.vars.{k}", "expects a non-empty text value")
        care_documentation = b.get("care_documentation", True)
        if not isinstance(care_documentation, bool):
            raise r.fail(f"{where}.care_documentation", "expects true or false")
        backends.append(
            BackendSettings(
                name=name,
                base_url=url.rstrip("/"),
                mappings=str(b.get("mappings", name)),
                source_uri=str(b.get("source_uri", f"urn:fhir-facade:source:{name}")),
                simulator=b.get("simulator"),
                description=str(b.get("description", "")),
                connect_timeout_s=r.number(t, "connect_s", f"{where}.timeout", 1.0, 0.01, 60),
                total_timeout_s=r.number(t, "total_s", f"{where}.timeout", 3.0, 0.01, 300),
                limit_per_host=r.integer(b, "limit_per_host", where, 100, 1, 10_000),
                vars=tuple((str(k), str(v)) for k, v in vars_.items()),
                breaker_failures=r.integer(br, "failures", f"{where}.breaker", 5, 1, 1000),
                breaker_open_s=r.number(br, "open_s", f"{where}.breaker", 10.0, 0.01, 3600),
                care_documentation=care_documentation,
            )
        )

    merge = r.section(top.get("merge"), "merge", {"source_priority"})
    names = [b.name for b in backends]
    priority = merge.get("source_priority", names)
    if (
        not isinstance(priority, list)
        or sorted(map(str, priority)) != sorted(names)
        or len(priority) != len(names)
    ):
        raise r.fail("merge.source_priority", f"expects every backend exactly once: {names}")

    s = r.section(
        top.get("simulators"),
        "simulators",
        {"seed", "patients", "faults", "records", "years", "cached_records", "render_cache_bytes"},
    )
    faults = s.get("faults", {}) or {}
    if not isinstance(faults, dict):
        raise r.fail("simulators.faults", "expects {simulator: {fault settings}}")
    for sim, spec in faults.items():
        try:
            Faults.from_dict(spec)
        except (ValueError, TypeError) as exc:
            raise r.fail(f"simulators.faults.{sim}", str(exc)) from None
    sims = SimulatorSettings(
        seed=r.integer(s, "seed", "simulators", 1177, 0, 2**31),
        patients=r.integer(s, "patients", "simulators", 0, 0, 10_000_000),
        faults=tuple((str(k), dict(v or {})) for k, v in faults.items()),
        years=r.integer(s, "years", "simulators", 10, 1, 100),
        cached_records=r.integer(s, "cached_records", "simulators", 250_000, 1, 100_000_000),
        render_cache_bytes=r.integer(s, "render_cache_bytes", "simulators", 0, 0, 1 << 34),
    )
    try:
        sims = replace(sims, records=simulator_records(s.get("records", 0)))
    except ValueError as exc:
        raise r.fail("simulators.records", str(exc)) from None

    key = None
    if env.get(PATIENT_ID_KEY_ENV):
        try:
            key = base64.b64decode(env[PATIENT_ID_KEY_ENV], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{PATIENT_ID_KEY_ENV}: not valid base64") from None
        if len(key) not in (16, 24, 32):
            raise ConfigError(f"{PATIENT_ID_KEY_ENV}: expects 16, 24 or 32 bytes (base64)")

    c = r.section(
        top.get("cache"),
        "cache",
        {"enabled", "ttl_s", "max_stale_s", "max_entries", "max_bytes", "store", "redis_url"},
    )
    enabled = c.get("enabled", True)
    if not isinstance(enabled, bool):
        raise r.fail("cache.enabled", "expects true or false")
    store = c.get("store", "memory")
    if store not in ("memory", "redis"):
        raise r.fail("cache.store", "expects memory or redis")
    redis_url = os.environ.get("FHIR_FACADE_REDIS_URL") or c.get("redis_url", "redis://127.0.0.1:6379/0")
    if not isinstance(redis_url, str) or not re.match(r"^(redis|rediss|unix)://", redis_url):
        raise r.fail("cache.redis_url", "expects a redis://, rediss:// or unix:// URL")
    cache = CacheSettings(
        enabled=enabled,
        ttl_s=r.number(c, "ttl_s", "cache", 30.0, 0, 86_400),
        max_stale_s=r.number(c, "max_stale_s", "cache", 300.0, 0, 7 * 86_400),
        max_entries=r.integer(c, "max_entries", "cache", 10_000, 1, 10_000_000),
        max_bytes=r.integer(c, "max_bytes", "cache", 256 * 1024 * 1024, 1024, 1 << 40),
        store=store,
        redis_url=redis_url,
    )

    e = r.section(top.get("engagement"), "engagement", {"enabled", "ttl_s", "never_skip"})
    if not isinstance(e.get("enabled", True), bool):
        raise r.fail("engagement.enabled", "expects true or false")
    never_skip = e.get("never_skip", sorted(EngagementSettings().never_skip))
    if not isinstance(never_skip, list) or not all(t in SUPPORTED_TYPES for t in never_skip):
        # (a misspelt type must not pass: it would leave the type it meant skippable)
        raise r.fail(
            "engagement.never_skip",
            f"expects a list of the facade's resource types ({', '.join(sorted(SUPPORTED_TYPES))})",
        )
    engagement = EngagementSettings(
        enabled=e.get("enabled", True),
        ttl_s=r.number(e, "ttl_s", "engagement", 60.0, 0.001, 300),
        never_skip=frozenset(never_skip),
    )

    st = r.section(top.get("store"), "store", {"kind", "sqlite_path", "postgres_dsn"})
    kind = st.get("kind", "sqlite")
    if kind not in ("sqlite", "postgres"):
        raise r.fail("store.kind", "expects sqlite or postgres")
    dsn = os.environ.get("FHIR_FACADE_POSTGRES_DSN") or st.get("postgres_dsn", DEFAULT_POSTGRES_DSN)
    if not isinstance(dsn, str) or not re.match(r"^postgres(ql)?://", dsn):
        raise r.fail("store.postgres_dsn", "expects a postgresql:// URL")
    store = StoreSettings(
        kind=kind,
        sqlite_path=_store_file(path, str(st.get("sqlite_path", "../var/facade.sqlite")), env),
        postgres_dsn=dsn,
    )

    ac = r.section(
        top.get("access"), "access", {"emergency_audiences", "auditors", "directory", "threat_register"}
    )
    emergency = ac.get("emergency_audiences", [a.name for a in DEFAULT_AUDIENCES if a.emergency_allowed])
    audiences = _audiences(r, top.get("audiences"), emergency)
    care = list(audiences.care)
    _policy_audiences(r, top.get("policy"), audiences)
    auditors = ac.get("auditors", []) or []
    if not isinstance(auditors, list) or not all(isinstance(a, str) and a for a in auditors):
        raise r.fail("access.auditors", "expects a list of user HSA-ids")
    directory = ac.get("directory", {}) or {}
    if not isinstance(directory, dict) or not all(isinstance(v, str) for v in directory.values()):
        raise r.fail("access.directory", "expects a mapping of HSA-id: name")
    tr = r.section(
        ac.get("threat_register"), "access.threat_register", {"care_unit", "care_provider", "audiences"}
    )
    threat_register = None
    if tr:
        for hsa_key in ("care_unit", "care_provider"):
            if not is_hsa_id(tr.get(hsa_key)):
                raise r.fail(f"access.threat_register.{hsa_key}", "expects an HSA-id")
        staff = tr.get("audiences", ["ambulance"])
        if not isinstance(staff, list) or not staff or not all(a in care for a in staff):
            raise r.fail("access.threat_register.audiences", f"expects a list of care audiences from {care}")
        threat_register = ThreatRegister(tr["care_unit"], tr["care_provider"], frozenset(staff))
        # The threat mapping gives every flag the care unit of its backend's ``ambulance_service_hsa_id``
        # (mappings/cosmic/threats.yaml): if that is not the register's unit, a block on the unit
        # the flags carry would hide the threat flag from every crew. One unit, or no start.
        for b in backends:
            unit = dict(b.vars).get(THREAT_UNIT_VAR)
            if unit is not None and unit != threat_register.care_unit:
                raise r.fail(
                    "access.threat_register.care_unit",
                    f"must be the unit the threat flags carry: backends.{b.name}.vars.{THREAT_UNIT_VAR}",
                )
    access = AccessSettings(
        auditors=frozenset(auditors),
        directory=tuple((str(k), v) for k, v in directory.items()),
        threat_register=threat_register,
    )

    metrics = _metrics(r, top.get("metrics"), env)
    http = _http_settings(r, top.get("http"))
    paging = _paging(r, top.get("paging"))
    admission = _admission(r, top.get("admission"))
    writes = _writes(r, top.get("writes"), audiences, {b.name for b in backends})
    outbox = _outbox(r, top.get("outbox"), backends)

    given_mappings = top.get("mappings_dir")
    mappings_dir = (path.parent / str(given_mappings)).resolve() if given_mappings else DEFAULT_MAPPINGS
    return Settings(
        facade=facade,
        backends=tuple(backends),
        mappings_dir=mappings_dir,
        source_priority=tuple(priority),
        simulators=sims,
        cache=cache,
        engagement=engagement,
        store=store,
        access=access,
        audiences=audiences,
        metrics=metrics,
        http=http,
        paging=paging,
        admission=admission,
        writes=writes,
        outbox=outbox,
        patient_id_key=key,
        auth=r.section(top.get("auth"), "auth", {"issuers", "leeway_s", "audience", "max_token_lifetime_s"}),
        policy=r.section(top.get("policy"), "policy", {"labels", "audiences", "protected_identity"}),
        config_dir=path.parent.resolve(),
    )


# an audience's name: a token claim value, a metric label, a stored column
_AUDIENCE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _audiences(r: _Reader, data: Any, emergency: Any) -> Audiences:
    """The client audiences (``audiences:``; left out, ``DEFAULT_AUDIENCES``' names, display names and
    kinds), each with emergency access when ``access.emergency_audiences`` names it."""
    kinds: list[Audience] = []
    if data is None:
        kinds = [replace(a, emergency_allowed=False) for a in DEFAULT_AUDIENCES]
    elif not isinstance(data, dict) or not data:
        raise r.fail("audiences", "expects a mapping of audience name: {display, patient, social_care}")
    else:
        for name, spec in data.items():
            where = f"audiences.{name}"
            if not isinstance(name, str) or not _AUDIENCE_NAME.match(name):
                raise r.fail(where, "an audience name is 1-32 of a-z, 0-9, - and _, starting with a letter")
            if name == "none":  # the metrics' and access log's label of a request without a token
                raise r.fail(where, "none is reserved: it labels requests without a token")
            e = r.section(spec, where, {"display", "patient", "social_care"})
            for flag in ("patient", "social_care"):
                if not isinstance(e.get(flag, False), bool):
                    raise r.fail(f"{where}.{flag}", "expects true or false")
            if e.get("patient", False) and e.get("social_care", False):
                raise r.fail(where, "the patient's own audience is not a social-care provider")
            display = e.get("display", name)
            if not isinstance(display, str) or not display.strip():
                raise r.fail(
                    f"{where}.display", "expects the name the patient's view of the access log shows"
                )
            kinds.append(
                Audience(
                    name, display, is_patient=e.get("patient", False), social_care=e.get("social_care", False)
                )
            )
    by_name = {a.name: a for a in kinds}
    if not isinstance(emergency, list) or not all(isinstance(a, str) for a in emergency):
        raise r.fail("access.emergency_audiences", "expects a list of care audiences")
    for name in emergency:
        a = by_name.get(name)
        if a is None or a.is_patient:
            care = [k.name for k in kinds if not k.is_patient]
            raise r.fail("access.emergency_audiences", f"{name!r} is not one of the care audiences {care}")
        if a.social_care:
            raise r.fail("access.emergency_audiences", f"{name} is social care: it has no emergency access")
    return Audiences(replace(a, emergency_allowed=a.name in emergency) for a in kinds)


def _policy_audiences(r: _Reader, data: Any, audiences: Audiences) -> None:
    """The policy names only configured audiences (its label grants: proxy/redact)."""
    policy = data if isinstance(data, dict) else {}
    grants = policy.get("audiences") or {}
    for name in grants if isinstance(grants, dict) else ():
        if name not in audiences:
            raise r.fail(
                f"policy.audiences.{name}", f"not an audience; the audiences are {list(audiences.names)}"
            )
    identity = policy.get("protected_identity") or {}
    disclosed = identity.get("disclosed_to") if isinstance(identity, dict) else None
    for name in disclosed if isinstance(disclosed, list) else ():
        if name not in audiences:
            raise r.fail(
                "policy.protected_identity.disclosed_to",
                f"{name!r} is not an audience: {list(audiences.names)}",
            )


def _metrics(r: _Reader, data: Any, env: dict[str, str]) -> MetricsSettings:
    m = r.section(data, "metrics", {"enabled", "allow_unauthenticated_loopback", "access_log", "log_format"})
    for key in ("enabled", "allow_unauthenticated_loopback", "access_log"):
        if not isinstance(m.get(key, False), bool):
            raise r.fail(f"metrics.{key}", "expects true or false")
    if m.get("log_format", "text") not in ("text", "json"):
        raise r.fail("metrics.log_format", "expects text or json")
    token = env.get(METRICS_TOKEN_ENV) or None
    if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
        raise ConfigError(f"{METRICS_TOKEN_ENV}: expects a random token of 16 or more printable characters")
    return MetricsSettings(
        enabled=m.get("enabled", True),
        token=token,
        allow_unauthenticated_loopback=m.get("allow_unauthenticated_loopback", False),
        access_log=m.get("access_log", True),
        log_format=m.get("log_format", "text"),
    )


def _paging(r: _Reader, data: Any) -> PagingSettings:
    p = r.section(data, "paging", {"snapshots", "snapshot_ttl_s"})
    if not isinstance(p.get("snapshots", True), bool):
        raise r.fail("paging.snapshots", "expects true or false")
    return PagingSettings(
        snapshots=p.get("snapshots", True),
        snapshot_ttl_s=r.number(p, "snapshot_ttl_s", "paging", 300.0, 1, 3600),
    )


# an origin as a browser sends it: scheme://host[:port], nothing after (RFC 6454 serialisation)
_ORIGIN = re.compile(r"^https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")


def _http_settings(r: _Reader, data: Any) -> HttpSettings:
    h = r.section(data, "http", {"cors", "compression"})
    c = r.section(h.get("cors"), "http.cors", {"allow_origins", "max_age_s"})
    origins = c.get("allow_origins", []) or []
    if not isinstance(origins, list):
        raise r.fail("http.cors.allow_origins", "expects a list of origins such as https://www.1177.se")
    for o in origins:
        if not isinstance(o, str) or not _ORIGIN.match(o.lower()):
            raise r.fail(
                "http.cors.allow_origins",
                f"{o!r} is not an origin: scheme://host[:port], no path, no wildcard (* is never allowed)",
            )
    z = r.section(h.get("compression"), "http.compression", {"gzip", "min_bytes"})
    if not isinstance(z.get("gzip", True), bool):
        raise r.fail("http.compression.gzip", "expects true or false")
    return HttpSettings(
        cors_allow_origins=tuple(dict.fromkeys(o.lower() for o in origins)),
        cors_max_age_s=r.integer(c, "max_age_s", "http.cors", 600, 0, 86_400),
        gzip=z.get("gzip", True),
        gzip_min_bytes=r.integer(z, "min_bytes", "http.compression", 1024, 0, 1 << 30),
    )


def _writes(r: _Reader, data: Any, audiences: Audiences, backends: set[str]) -> WritesSettings:
    w = r.section(data, "writes", {"policy"})
    policy = w.get("policy") or {}
    if not isinstance(policy, dict):
        raise r.fail("writes.policy", "expects a mapping: audience -> resource type -> [backends]")
    out = []
    for name, types in policy.items():
        where = f"writes.policy.{name}"
        audience = audiences.get(name)
        if audience is None:
            raise r.fail(where, "is not a configured audience")
        if audience.is_patient:
            raise r.fail(where, "the patient writes no clinical data through the facade")
        if not isinstance(types, dict) or not types:
            raise r.fail(where, "expects a mapping: resource type -> [backends]")
        granted = []
        for rtype, targets in types.items():
            if rtype not in WRITABLE_TYPES:
                raise r.fail(f"{where}.{rtype}", f"is not writable (one of {', '.join(WRITABLE_TYPES)})")
            if not isinstance(targets, list) or not targets or len(set(targets)) != len(targets):
                raise r.fail(f"{where}.{rtype}", "expects a list of distinct backends")
            unknown = [t for t in targets if t not in backends]
            if unknown:
                raise r.fail(f"{where}.{rtype}", f"unknown backend(s): {', '.join(map(str, unknown))}")
            granted.append((rtype, tuple(targets)))
        out.append((name, tuple(granted)))
    return WritesSettings(policy=tuple(out))


def _admission(r: _Reader, data: Any) -> AdmissionSettings:
    a = r.section(data, "admission", {"enabled", "max_in_flight", "max_queue", "max_wait_s", "retry_after_s"})
    if not isinstance(a.get("enabled", True), bool):
        raise r.fail("admission.enabled", "expects true or false")
    d = AdmissionSettings()
    return AdmissionSettings(
        enabled=a.get("enabled", True),
        max_in_flight=r.integer(a, "max_in_flight", "admission", d.max_in_flight, 1, 100_000),
        max_queue=r.integer(a, "max_queue", "admission", d.max_queue, 0, 100_000),
        max_wait_s=r.number(a, "max_wait_s", "admission", d.max_wait_s, 0.001, 60),
        retry_after_s=r.integer(a, "retry_after_s", "admission", d.retry_after_s, 1, 3600),
    )


def _outbox(r: _Reader, data: Any, backends: list[BackendSettings]) -> OutboxSettings:
    o = r.section(
        data,
        "outbox",
        {"lease_s", "claim_limit", "max_attempts", "backoff_base_s", "backoff_cap_s", "poll_s", "wait_s"},
    )
    d = OutboxSettings()
    lease = r.number(o, "lease_s", "outbox", d.lease_s, 1, 3600)
    # a request is given LEASE_USE of a lease: one that may take longer would be cut off every time
    slowest = max(backends, key=lambda b: b.total_timeout_s)
    if lease * LEASE_USE < slowest.total_timeout_s:
        raise r.fail(
            "outbox.lease_s",
            f"expects at least backends.{slowest.name}.timeout.total_s / {LEASE_USE:g}"
            f" ({slowest.total_timeout_s / LEASE_USE:.3g} s): a request may take its total_s",
        )
    base = r.number(o, "backoff_base_s", "outbox", d.backoff_base_s, 0.001, 3600)
    return OutboxSettings(
        lease_s=lease,
        claim_limit=r.integer(o, "claim_limit", "outbox", d.claim_limit, 1, 1000),
        max_attempts=r.integer(o, "max_attempts", "outbox", d.max_attempts, 1, 1000),
        backoff_base_s=base,
        backoff_cap_s=r.number(o, "backoff_cap_s", "outbox", max(d.backoff_cap_s, base), base, 86_400),
        poll_s=r.number(o, "poll_s", "outbox", d.poll_s, 0.01, 60),
        wait_s=r.number(o, "wait_s", "outbox", d.wait_s, 0, 60),
    )
