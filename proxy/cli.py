"""The ``fhir-facade`` command.

fhir-facade demo [--port 8080] [--patients N] [--records N] [--years Y]   simulators + facade on loopback
fhir-facade serve --config FILE [--port N] [--workers N]   the facade (needs facade.public_base_url)
fhir-facade simulate {cosmic,viva,npo} --port N [--patients N] [--records N|MIN-MAX] [--years Y]   one alone
fhir-facade mappings check [--config FILE]         compile and validate every mapping
fhir-facade token --audience A [--pnr P] [--patient ID|PNR] [--scope S] [--lifetime S]   a DEV-ONLY demo token
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from proxy import loop
from proxy.accesslog import ACCESS_LOGGER, JsonFormatter, LineFormatter
from proxy.app import create_app
from proxy.auth.demo import DEMO_AUDIENCES, demo_issuer, make_token
from proxy.edge.http import AUTH_KEY
from proxy.edge.server import AcceptingSite, FacadeRunner
from proxy.fhir.ids import PatientIds
from proxy.mapping.validate import MappingError
from proxy.settings import (
    DEFAULT_CONFIG,
    DEMO_PATIENT_ID_KEY,
    PATIENT_ID_KEY_ENV,
    ConfigError,
    Settings,
    SimulatorSettings,
    load_settings,
    simulator_records,
)
from proxy.simulators import NAMES
from proxy.simulators.faults import Faults
from proxy.simulators.harness import listening, people_for, running_simulators, serving, simulator_app
from proxy.simulators.population import DEMO_PEOPLE, LONG_HISTORIES, LONG_HISTORY_PEOPLE, UNKNOWN_PNR

log = logging.getLogger("fhir_facade")


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _demo(settings: Settings, port: int, patients: int | None) -> None:
    people = people_for(settings, patients)
    async with running_simulators(settings, people) as urls:
        # links and Location name the demo's own loopback address, never a request's Host header
        sock = listening(settings.facade.host, port)
        host, bound = sock.getsockname()[:2]
        base = f"http://{f'[{host}]' if ':' in host else host}:{bound}{settings.facade.base_path}"
        live = settings.with_backend_urls(urls)
        live = replace(live, facade=replace(live.facade, public_base_url=base))
        app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
        async with serving(app, sock=sock, runner_class=FacadeRunner):
            ids = PatientIds(DEMO_PATIENT_ID_KEY)
            print(f"FHIR base URL: {base}")
            for name, u in urls.items():
                print(f"  simulator {name:<7} {u}")
            print("Demo patients (synthetic test personnummer):")
            for p in DEMO_PEOPLE:
                name = f"{p.given} {p.family}"
                print(f"  {p.pnr}  {name:<18}  Patient/{ids.encode(p.pnr)}")
            for p in LONG_HISTORY_PEOPLE:
                name = f"{p.given} {p.family}"
                records, years = LONG_HISTORIES[p.pnr]
                print(
                    f"  {p.pnr}  {name:<18}  Patient/{ids.encode(p.pnr)}  ({records} records, {years} years)"
                )
            print(f"  {UNKNOWN_PNR}  (unknown to every system)")
            named = len(DEMO_PEOPLE) + len(LONG_HISTORY_PEOPLE)
            if len(people) > named:
                sims = settings.simulators
                long = f", {_records_text(sims)} records each" if sims.records[1] else ""
                print(f"  + {len(people) - named} generated patients{long}")
            tolvan = ids.encode(DEMO_PEOPLE[0].pnr)
            lifetime = int(app[AUTH_KEY].max_token_lifetime_s)
            print(
                f"Tokens, one per audience (dev-only demo issuer, valid {lifetime} s, "
                "`fhir-facade token` prints more; the patient is Tolvan):"
            )
            for audience in DEMO_AUDIENCES:  # (the demo issuer's)
                pnr = DEMO_PEOPLE[0].pnr if audience.is_patient else None
                token = make_token(audience.name, pnr=pnr, lifetime_s=lifetime)
                print(f"  export {audience.name.upper()}='{token}'")
            print("Try:")
            print(
                '  curl -H "Authorization: Bearer $CLINICIAN" '
                f"'{base}/Patient?identifier=http://electronichealth.se/identifier/personnummer|191212121212'"
            )
            print(f"  curl -H \"Authorization: Bearer $AMBULANCE\" '{base}/Patient/{tolvan}/$everything'")
            print("Serving until Ctrl-C.", flush=True)
            settle_heap()
            await _until_interrupted()


def _records_text(sims: SimulatorSettings) -> str:
    lo, hi = sims.records
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def with_history(settings: Settings, records: str | None, years: int | None) -> Settings:
    """The settings with ``--records`` / ``--years`` (when given) as the long-history knobs."""
    sims = settings.simulators
    if records is not None:
        try:
            sims = replace(sims, records=simulator_records(records))
        except ValueError as exc:
            raise ConfigError(f"--records: {exc}") from None
    if years is not None:
        if not 1 <= years <= 100:
            raise ConfigError("--years expects 1 to 100")
        sims = replace(sims, years=years)
    return replace(settings, simulators=sims)


def settle_heap() -> None:
    """Once started, tune the cyclic garbage collector for a server's heap.

    Compiled mappings, FHIR models and libraries are a few hundred thousand objects that never die;
    each full (generation 2) collection walked them all, stopping the event loop for ~50 ms — the
    facade's worst latency outliers. Frozen (``gc.freeze``), a full collection walks only what
    requests and the cache create. And an ``$everything`` builds thousands of dicts that live as
    long as the request: collecting the young generation every 700 net allocations (the default)
    walked the same in-flight objects over and over. Every 10 000, the bench measured a third of the
    collection time (1.5 s → 0.57 s over its uncached run) and 10 % more throughput, for young
    collections of 2-4 ms instead of 0.1 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


# The kernel's queue of connections a worker has not accepted yet. While its loop is busy, a burst of
# new connections waits there; past the queue's end the kernel drops them, and each client waits for
# its SYN to be sent again (1 s, 3 s, …) — a delay nobody answers for. Queued, they are all accepted
# at the loop's next turn (proxy.edge.server.AcceptingSite) and reach admission control
# (proxy/edge/admission.py), which lets them in or refuses them at once (bench/overload.py counts the
# drops). aiohttp's default is 128; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


async def _serve(settings: Settings, host: str, port: int, key: bytes, *, reuse_port: bool = False) -> None:
    app = create_app(settings, patient_id_key=key)
    async with serving(
        app,
        host,
        port,
        reuse_port=reuse_port,
        runner_class=FacadeRunner,
        backlog=LISTEN_BACKLOG,
        site_class=AcceptingSite,
    ) as url:
        settle_heap()
        base = url + settings.facade.base_path
        running = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # uvloop | asyncio
        print(f"FHIR base URL: {base} (pid {os.getpid()}, event loop {running})", flush=True)
        await _until_interrupted()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool, settings: Settings | None = None) -> None:
    """Text lines on stderr, the access log's as JSON (``proxy.accesslog``) — or, with
    ``metrics.log_format: json``, every line as JSON; the access log at INFO whatever ``-v`` says,
    unless ``metrics.access_log`` is false."""
    handler = logging.StreamHandler()
    as_json = settings is not None and settings.metrics.log_format == "json"
    handler.setFormatter(JsonFormatter() if as_json else LineFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    if settings is not None and settings.metrics.access_log:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)


def _worker(config: Path | None, host: str, port: int, key: bytes, verbose: bool = False) -> None:
    """One of ``serve --workers N``: its own event loop, backend sessions and cache; its metrics in
    the shared ``PROMETHEUS_MULTIPROC_DIR`` (``proxy.metrics``)."""
    settings = load_settings(config)
    configure_logging(verbose, settings)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            loop.run(_serve(settings, host, port, key, reuse_port=True))
    finally:
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(os.getpid())  # (its live gauges, e.g. the audit queue, no longer count)


def _serve_workers(
    config: Path | None, host: str, port: int, key: bytes, workers: int, verbose: bool = False
) -> None:
    """N processes on one port. Nothing correctness depends on lives in a worker's memory (ids are
    derived from the shared key, the cache is an optimisation), so any worker may answer anything.
    Their metrics meet in a directory made here (prometheus-client's multiprocess mode; a scrape of
    any worker sums them), removed when the command stops."""
    if port == 0:
        raise ConfigError("serve --workers needs a fixed --port (the workers share it)")
    from proxy.metrics import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix="fhir-facade-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # (inherited by the spawned workers)
    try:
        _run_workers(config, host, port, key, workers, verbose)
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_workers(config: Path | None, host: str, port: int, key: bytes, workers: int, verbose: bool) -> None:

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # so the workers are stopped with the parent
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(config, host, port, key, verbose), daemon=False)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)


async def _simulate(
    settings: Settings, name: str, host: str, port: int, patients: int | None, seed: int | None
) -> None:
    people = people_for(settings, patients, seed)
    faults = Faults.from_dict(dict(settings.simulators.faults).get(name))
    app = simulator_app(name, people, settings.simulators, faults)
    sims = settings.simulators
    long = (
        f", {_records_text(sims)} records per generated patient over {sims.years} years"
        if sims.records[1]
        else ""
    )
    async with serving(app, host, port) as url:
        print(
            f"{name} simulator at {url} ({len(people)} patients{long}); fault control at "
            f"{url}/_sim/faults, counts at {url}/_sim/stats",
            flush=True,
        )
        await _until_interrupted()


async def _check(settings: Settings) -> int:
    from proxy.mappingcheck import check  # imports fhir.resources: only this command needs it

    # the named demo patients and five generated ones (the long history's generator makes the same
    # kinds of record as the others: its own tests map it, tests/mapping/test_long_history.py)
    people = people_for(settings, patients=5, long_histories=False)
    report = await check(settings, [p.pnr for p in people], running_simulators(settings, people, faults={}))
    for name, n in sorted(report.per_mapping.items()):
        print(f"  {name:<32} {n:>5} resources")
    for name, n in sorted(report.written.items()):
        print(f"  {name:<32} {n:>5} written")
    for line in report.unwritten:
        print(f"UNWRITTEN {line}")
    for line in report.silent:
        print(f"SILENT   {line}: produced nothing from the sample data")
    for name, n in sorted(report.unattributed.items()):
        print(f"NO OWNER {name}: {n} record(s) without a care provider (withheld from care staff)")
    for line in report.degraded:
        print(f"DEGRADED {line}")
    for line in report.invalid:
        print(f"INVALID  {line}")
    total = sum(report.per_mapping.values())
    print(
        f"{len(report.per_mapping)} mappings, {total} resources, {len(report.invalid)} invalid: "
        + ("OK" if report.ok else "FAILED")
    )
    return 0 if report.ok else 1


def _patient_id_key() -> bytes:
    raw = os.environ.get(PATIENT_ID_KEY_ENV)
    if not raw:
        raise ConfigError(
            f"{PATIENT_ID_KEY_ENV} is not set: give 16, 24 or 32 random bytes, base64 "
            f"(e.g. `python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`)"
        )
    key = base64.b64decode(raw)
    if key == DEMO_PATIENT_ID_KEY:
        raise ConfigError(f"{PATIENT_ID_KEY_ENV} is the public demo key; `serve` needs a secret one")
    return key


def _token(
    settings: Settings,
    audience: str,
    pnr: str | None,
    scope: str | None,
    lifetime: int | None,
    patient: str | None = None,
) -> int:
    """Print a token signed by the dev-only demo issuer, for the configured `aud`."""
    from proxy.auth.config import DEFAULT_AUDIENCE
    from proxy.auth.demo import make_token
    from proxy.auth.verify import Authenticator

    is_patient = DEMO_AUDIENCES[audience].is_patient
    if is_patient and not pnr:
        print(
            "fhir-facade: token --audience patient needs --pnr (the patient's personnummer)", file=sys.stderr
        )
        return 2
    if not is_patient and pnr:
        print("fhir-facade: --pnr is only for --audience patient", file=sys.stderr)
        return 2
    longest = int(Authenticator.from_settings(settings).max_token_lifetime_s)
    if lifetime is None:
        lifetime = longest
    if not 1 <= lifetime <= longest:
        print(
            f"fhir-facade: --lifetime expects 1 to {longest} seconds (auth.max_token_lifetime_s)",
            file=sys.stderr,
        )
        return 2
    aud = settings.auth.get("audience", DEFAULT_AUDIENCE)
    try:
        token = make_token(audience, pnr=pnr, patient=patient, scopes=scope, lifetime_s=lifetime, aud=aud)
    except ValueError as exc:
        print(f"fhir-facade: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--records",
        default=None,
        help="records per generated patient across the three simulators: N, or MIN-MAX drawn per patient "
        "(default from config: 0, the small histories)",
    )
    parser.add_argument("--years", type=int, default=None, help="years of history (default from config: 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-facade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="config file (default: config/facade.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    # `--config FILE` after the command too (`fhir-facade serve --config FILE`, as the README writes
    # it); SUPPRESS: a command without it keeps the one given before the command
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", parents=[config], help="run the simulators and the facade on loopback until Ctrl-C"
    )
    demo.add_argument("--port", type=int, default=None, help="facade port (default from config: 8080)")
    demo.add_argument("--patients", type=int, default=None, help="generated patients besides the demo ones")
    _history_arguments(demo)

    serve = sub.add_parser("serve", parents=[config], help="run the facade against the configured backends")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")

    sim = sub.add_parser("simulate", parents=[config], help="run one backend simulator")
    sim.add_argument("name", choices=NAMES)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="0 = a free port")
    sim.add_argument("--patients", type=int, default=None)
    sim.add_argument("--seed", type=int, default=None)
    _history_arguments(sim)
    sim.add_argument(
        "--cached-records",
        type=int,
        default=None,
        help="records of generated patients kept in memory (default from config: 250000)",
    )
    sim.add_argument(
        "--render-cache-mb",
        type=int,
        default=None,
        help="long answers kept once rendered, in MiB (default from config: 0, off)",
    )

    maps = sub.add_parser("mappings", help="work with the declarative mappings")
    maps_sub = maps.add_subparsers(dest="action", required=True)
    maps_sub.add_parser(
        "check", parents=[config], help="validate every mapping's output against the simulators' data"
    )

    tok = sub.add_parser("token", parents=[config], help="print a DEV-ONLY bearer token from the demo issuer")
    tok.add_argument("--audience", required=True, choices=DEMO_AUDIENCES.names)
    tok.add_argument("--pnr", default=None, help="the patient's personnummer (--audience patient)")
    tok.add_argument(
        "--patient",
        default=None,
        help="the SMART launch patient (the `patient` claim; patient/ scopes cover only it): a Patient id, "
        "or a personnummer (its id under the demo key); a patient token names its own by default",
    )
    tok.add_argument(
        "--scope",
        default=None,
        help='space-separated SMART scopes (default "user/*.rs user/Consent.cu", '
        'for a patient "patient/*.rs patient/Consent.cu")',
    )
    tok.add_argument(
        "--lifetime",
        type=int,
        default=None,
        help="seconds until the token expires (default and most: auth.max_token_lifetime_s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)  # (a config error is logged as text: no settings yet)
    try:
        settings = load_settings(args.config)
        if args.command in ("demo", "serve"):  # the config's log format and access log
            configure_logging(args.verbose, settings)
        if args.command in ("demo", "simulate"):
            settings = with_history(settings, args.records, args.years)
        if args.command == "simulate" and args.cached_records is not None:
            if args.cached_records < 1:
                raise ConfigError("--cached-records expects 1 or more")
            sims = replace(settings.simulators, cached_records=args.cached_records)
            settings = replace(settings, simulators=sims)
        if args.command == "simulate" and args.render_cache_mb is not None:
            if args.render_cache_mb < 0:
                raise ConfigError("--render-cache-mb expects 0 or more")
            sims = replace(settings.simulators, render_cache_bytes=args.render_cache_mb << 20)
            settings = replace(settings, simulators=sims)
        if args.command == "demo":
            port = settings.facade.port if args.port is None else args.port
            loop.run(_demo(settings, port, args.patients))
        elif args.command == "serve":
            key = _patient_id_key()
            if settings.facade.public_base_url is None:
                raise ConfigError(
                    f"{(args.config or DEFAULT_CONFIG).name}: facade.public_base_url: `serve` needs the "
                    "address clients use (e.g. https://fhir.region.se/fhir) for links and Location; "
                    "it is never taken from a request's Host header"
                )
            host = args.host or settings.facade.host
            port = settings.facade.port if args.port is None else args.port
            if args.workers < 1:
                raise ConfigError("--workers expects 1 or more")
            if args.workers > 1:
                _serve_workers(args.config, host, port, key, args.workers, args.verbose)
            else:
                loop.run(_serve(settings, host, port, key))
        elif args.command == "simulate":
            loop.run(_simulate(settings, args.name, args.host, args.port, args.patients, args.seed))
        elif args.command == "mappings":
            return loop.run(_check(settings))
        elif args.command == "token":
            return _token(settings, args.audience, args.pnr, args.scope, args.lifetime, args.patient)
    except (ConfigError, MappingError) as exc:
        print(f"fhir-facade: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fhir-facade: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
