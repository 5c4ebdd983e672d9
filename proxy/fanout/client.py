"""Ask the backends, concurrently, each within its own budget: raw, audience-free answers.

Each backend is asked through its ``Transport`` (``proxy.fanout.transport``: one long-lived
``aiohttp.ClientSession`` per backend in production, made in the app's ``cleanup_ctx``; in memory in
unit tests). A backend is asked only for the requests the query's mappings need; requests that
several mappings share (e.g. Cosmic's alerts list feeding both Flag and AllergyIntolerance) are sent
once. Each answer that arrives whole is handed on at once (``OnAnswer``), so the pipeline maps it
while the others are still out. Whatever a backend does — time out, refuse, answer 5xx, cut the
connection, send too much — becomes a ``SourceResult`` with a status and a short, non-sensitive
detail; nothing here raises.

Time queued inside the facade is never charged to a backend. Each request is sent inside one of the
backend's connection slots (``Transport.slot``); its budget (``total_timeout_s``) starts when it has
one — the wait for a slot, and for the event loop to get to the request, is the facade's. A budget
timer that fires late because the loop was stalled (other requests' CPU work) gives the answers that
came in meanwhile the stalled time to be read. At the request deadline, a backend's share still out
is the backend's fault only when one of its requests was sent and was with it at least as long as
it had waited in the facade; otherwise — never sent, sent too late, or the deadline itself came
late — it is the facade's own condition (``SourceStatus.OVERLOADED``): named in the answer as
missing, never counted by the backend's breaker, never learned from.

An answer is read whole up to ``max_body_bytes``. A larger one — a long history — is handed, chunk by
chunk as it arrives, to an ``AnswerSink`` the caller opens for it (``OpenSink``; the pipeline's maps
it record by record, ``proxy.mapping.stream``), up to ``max_answer_bytes``; it is then handed on
like any other. Cut off — the connection closed mid-body, or the answer passed ``max_answer_bytes`` —
it is handed on all the same (what arrived whole of it counts), and the backend's result says that
part of its answer is missing (``SourceResult.partial``). Without a sink, an answer over
``max_body_bytes`` is refused whole, as "larger than".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from yarl import URL

from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.fanout.breaker import CircuitBreaker
from proxy.fanout.transport import (
    CHUNK_BYTES,
    AiohttpTransport,
    BodyTooLarge,
    Exchange,
    Transport,
    TransportError,
)
from proxy.mapping.requests import Context, RequestSpec, UnknownPatient
from proxy.settings import BackendSettings, FacadeSettings
from proxy.slack import lane
from proxy.trace import outgoing_headers
from proxy.types import SourceResult, SourceStatus

log = logging.getLogger("proxy.fanout")  # the name it logged under before the module moved
T = TypeVar("T")

# A timer this late (s) means the event loop was held up — by other requests' CPU work — rather than
# scheduling noise: what came in meanwhile is read before anyone is blamed (see ``BackendRun.expire``).
STALL_S = 0.25
# The facade's own conditions (SourceStatus.OVERLOADED): its data missing, no fault of the source's
NOT_ASKED = "was not asked in time: the facade was overloaded"
ASKED_TOO_LATE = "was asked too late to answer in time: the facade was overloaded"
NOT_HEARD = "its answer could not be read in time: the facade was overloaded"

# "This patient is unknown here" is never a bare status: a backend's patient lookup declares the
# answer that says so (``request.unknown_patient``: a status and a body marker). In one run, the
# lookup's own answer decides; another request of that run answering with the same status and marker
# is consistent with it — and counts as "nothing here" only when the lookup said "unknown" too. Any
# other non-2xx, and a marker without the lookup's word, is a failed source (see ``_result``).
_UNKNOWN = "unknown patient"  # an outcome's detail: the answer carried the declared marker


def _weighted(mean: float | None, sample: float) -> float:
    """An exponentially weighted mean, updated with ``sample`` (none yet, or 0: the sample itself)."""
    return sample if not mean else 0.8 * mean + 0.2 * sample


class AnswerSink(Protocol):
    """Takes an answer too large to hold whole, chunk by chunk as it arrives."""

    def feed(self, chunk: bytes) -> bool:
        """The next part of the body; False when nothing more is wanted (it cannot be read)."""
        ...

    def close(self, complete: bool) -> None:
        """The body has ended: all of it, or (``complete`` False) cut off."""
        ...


# one sink per answer too large to hold whole: (backend, request) → its sink
OpenSink = Callable[[str, RequestSpec], AnswerSink]
# (backend, request, body) — body None: the backend said the patient is unknown there (see _UNKNOWN);
# an AnswerSink: the answer was read into it (closed: whole, or cut off — see the result)
OnAnswer = Callable[[str, RequestSpec, bytes | AnswerSink | None], None]
# what one request came to: its status, its body (a sink: also when it was cut off), a detail
_Outcome = tuple[SourceStatus, bytes | AnswerSink | None, str]

_ANSWER_CAP = FacadeSettings().max_answer_bytes  # (the configured default)
# what a cut answer's detail adds: the source is named beside it, the asker is told what is missing
PART_MISSING = "part of its answer is missing"


@dataclass(slots=True)
class BackendClient:
    """One backend: its settings, its transport (a long-lived HTTP session) and its circuit breaker."""

    settings: BackendSettings
    transport: Transport
    max_body_bytes: int  # read whole up to this; a larger answer goes to a sink (see the module doc)
    breaker: CircuitBreaker
    base: str  # the base URL, to which each request's target is appended
    max_answer_bytes: int = _ANSWER_CAP  # a sink's answer is cut off past this
    # how long this backend has been taking to answer a whole fetch (exponentially weighted, ms):
    # fan-out asks the slowest first, so its calls leave before the quick backends' calls
    typical_ms: float = 0.0
    # per learning key (``RequestSpec.learning_key``), how long its answers have taken to handle
    # (map) once in (weighted, ms):
    # the costliest are sent first, so they tend to arrive first and be mapped while the others
    # are on their way, and the answer that comes in last — that everything waits for — is cheap
    handling_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        settings: BackendSettings,
        max_body_bytes: int,
        *,
        max_answer_bytes: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        transport: Transport | None = None,
    ) -> BackendClient:
        """The client for one backend; ``transport`` defaults to aiohttp with the backend's
        connection limit and connect timeout (unit tests pass a ``MemoryTransport``)."""
        if transport is None:
            transport = AiohttpTransport.open(
                limit_per_host=settings.limit_per_host, connect_timeout_s=settings.connect_timeout_s
            )
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s, clock)
        base = str(URL(settings.base_url.rstrip("/")))  # (percent-encoded, as the request targets are)
        return cls(
            settings=settings,
            transport=transport,
            max_body_bytes=max_body_bytes,
            breaker=breaker,
            base=base,
            max_answer_bytes=max(max_body_bytes, max_answer_bytes or _ANSWER_CAP),
        )

    async def close(self) -> None:
        await self.transport.close()

    def start(
        self,
        specs: Sequence[RequestSpec],
        ctx: Context,
        on_answer: OnAnswer | None = None,
        on_done: Callable[[SourceResult], None] | None = None,
        open_sink: OpenSink | None = None,
    ) -> BackendRun:
        """Send each request now, concurrently, one task each — the ones whose answers have cost
        the most to handle first (see ``handled``). ``on_answer(backend, spec, body)``
        sees each body as soon as it has arrived whole (or, read into a sink from ``open_sink``, has
        ended); ``on_done(result)`` is called — from the task of the request that finished last,
        with no further hop through the event loop — once every request has ended.
        ``BackendRun.abandon`` cuts off the ones still out."""
        run = BackendRun(self, specs, on_done)
        run.on_answer = on_answer
        run.open_sink = open_sink
        run.lookup = next((i for i, spec in enumerate(specs) if spec.unknown_patient is not None), None)
        if not specs:
            run.settle(SourceResult(self.settings.name, SourceStatus.OK))
            return run
        if not self.breaker.allow():
            wait = self.breaker.retry_after_s()
            detail = f"was not asked: it failed repeatedly (asked again in {wait:.0f} s)"
            run.settle(SourceResult(self.settings.name, SourceStatus.UNAVAILABLE, 0.0, detail))
            return run
        cost = self.handling_ms.get
        run.tasks = [  # (tasks start in creation order; ``i`` keeps each outcome in plan order)
            asyncio.ensure_future(self._ask(run, i, spec, ctx))
            for i, spec in sorted(enumerate(specs), key=lambda item: -cost(item[1].learning_key, 0.0))
        ]
        run.arm(run.started + self.settings.total_timeout_s)  # (no request can be due before)
        return run

    async def fetch(
        self,
        specs: Sequence[RequestSpec],
        ctx: Context,
        on_answer: OnAnswer | None = None,
        open_sink: OpenSink | None = None,
    ) -> SourceResult:
        """``start``, and wait for the result (cancelled: the requests still out are cut off)."""
        done: asyncio.Future[SourceResult] = asyncio.get_running_loop().create_future()
        run = self.start(specs, ctx, on_answer, lambda result: _resolve(done, result), open_sink)
        try:
            return await done
        except asyncio.CancelledError:
            run.abandon("cancelled", its_fault=False)
            raise

    async def _ask(self, run: BackendRun, i: int, spec: RequestSpec, ctx: Context) -> None:
        marker = None if run.lookup is None else run.specs[run.lookup].unknown_patient
        async with self.transport.slot():  # (the wait for a connection is the facade's own)
            run.sent(i)  # its budget starts now
            outcome = await self._one(spec, ctx, marker, run)
        if run.result is not None:  # out of time while this answer was on its way
            return
        # a marker answer to another request waits for the lookup's word (see _result)
        if outcome[0] is SourceStatus.OK and (outcome[2] != _UNKNOWN or i == run.lookup):
            self._hand_on(run, spec, outcome[1])
        elif outcome[1] is not None:  # cut off mid-way: what arrived whole of it counts
            run.partial.add(i)
            self._hand_on(run, spec, outcome[1])
        run.outcomes[i] = (outcome[0], outcome[2])  # (the body is the receiver's now)
        run.pending -= 1
        if not run.pending:
            run.settle(self._result(run))

    def _result(self, run: BackendRun) -> SourceResult:
        """The backend's result once every request has ended; counted by the breaker."""
        # "unknown patient" from the lookup makes the same answer to the run's other requests
        # consistent ("nothing here"); without the lookup's word that answer is a failure
        lookup_says_unknown = run.lookup is not None and run.outcomes[run.lookup] == (
            SourceStatus.OK,
            _UNKNOWN,
        )
        for i, outcome in enumerate(run.outcomes):
            if outcome != (SourceStatus.OK, _UNKNOWN) or i == run.lookup:
                continue
            if lookup_says_unknown:
                self._hand_on(run, run.specs[i], None)
            else:
                detail = "answered 'unknown patient' to a request, but its patient lookup did not"
                run.outcomes[i] = (SourceStatus.ERROR, detail)
        outcomes = [o for o in run.outcomes if o is not None]
        failed = any(status in (SourceStatus.TIMEOUT, SourceStatus.ERROR) for status, _ in outcomes)
        self.breaker.record(success=not failed)
        worst: tuple[SourceStatus, str] | None = None
        partial = False
        for i, outcome in enumerate(run.outcomes):
            if outcome is None:
                continue
            status, detail = outcome
            if status is not SourceStatus.OK and (worst is None or _rank(status) > _rank(worst[0])):
                worst, partial = (status, detail), i in run.partial
        latency = (time.perf_counter() - run.first_sent()) * 1000
        self.took(latency)
        if worst is None:  # unknown here: the lookup and every other request said so, positively
            unknown = lookup_says_unknown and all(o == (SourceStatus.OK, _UNKNOWN) for o in outcomes)
            return SourceResult(self.settings.name, SourceStatus.OK, latency, unknown_patient=unknown)
        return SourceResult(self.settings.name, worst[0], latency, worst[1], partial=partial)

    def _hand_on(self, run: BackendRun, spec: RequestSpec, body: bytes | AnswerSink | None) -> None:
        if run.on_answer is None:
            return
        try:
            run.on_answer(self.settings.name, spec, body)
        except Exception:  # (it must not raise) the answer still counts, the backend settles
            log.exception("handing on an answer from %s failed", self.settings.name)

    def handled(self, key: str, ms: float) -> None:
        """Learn how long the answer to a request (its ``learning_key``) took to handle (an
        exponentially weighted mean)."""
        self.handling_ms[key] = _weighted(self.handling_ms.get(key), ms)

    def took(self, latency_ms: float) -> None:
        """Learn how long a whole fetch took (an exponentially weighted mean)."""
        self.typical_ms = _weighted(self.typical_ms, latency_ms)

    async def _one(
        self,
        spec: RequestSpec,
        ctx: Context,
        marker: UnknownPatient | None = None,
        run: BackendRun | None = None,
    ) -> _Outcome:
        """One request, through the transport (whose errors are TransportErrors: see
        ``proxy.fanout.transport``). An answer with the ``marker``'s status is read and checked for
        its body marker: (OK, None, _UNKNOWN) if it carries it; a non-2xx without it is a failure
        like any other, its body never read."""
        try:
            request = spec.render(ctx)
            async with self.transport.request(
                spec.method,
                self.base + request.target,
                headers=outgoing_headers(request.headers),  # (+ X-Request-ID, traceparent)
                body=request.body,
            ) as resp:
                return await self._outcome(resp, spec, marker, run)
        except TransportError as exc:
            return exc.status, None, exc.detail
        except BodyTooLarge:
            return SourceStatus.INVALID, None, f"answer larger than {self.max_body_bytes} bytes"
        except Exception:  # a backend must never fail the request: log where, not what
            log.exception("unexpected error asking %s", self.settings.name)
            return SourceStatus.ERROR, None, "failed unexpectedly"

    async def _outcome(
        self, resp: Exchange, spec: RequestSpec, marker: UnknownPatient | None, run: BackendRun | None
    ) -> _Outcome:
        ok = 200 <= resp.status < 300
        try:
            if marker is not None and resp.status == marker.status:
                # (an answer that says "unknown" is small: one larger than max_body_bytes is not it)
                body = await resp.read(self.max_body_bytes)
                if marker.says_unknown(resp.status, body, spec.format):
                    return SourceStatus.OK, None, _UNKNOWN
                if ok:
                    return SourceStatus.OK, body, ""
            if not ok:
                return SourceStatus.ERROR, None, f"answered HTTP {resp.status}"
            return SourceStatus.OK, await resp.read(self.max_body_bytes), ""
        except BodyTooLarge as too_large:
            if not ok or run is None or run.open_sink is None:
                raise
            return await self._stream(resp, run.open_sink(self.settings.name, spec), too_large.head, run)

    async def _stream(self, resp: Exchange, sink: AnswerSink, head: bytes, run: BackendRun) -> _Outcome:
        """The rest of an answer too large to hold whole, into ``sink`` as it arrives — up to
        ``max_answer_bytes``; what is past it is not read. A cut answer is handed on all the same.
        The time the sink takes is the facade's, not the backend's: it is added to the backend's
        budget and to the request's deadline (``BackendRun.own_s``)."""
        cap = self.max_answer_bytes
        size = 0

        def take(chunk: bytes) -> bool:  # False: stop reading (the cap, or the sink wants no more)
            nonlocal size
            size += len(chunk)
            started = time.perf_counter()
            try:
                if size > cap:
                    sink.feed(chunk[: len(chunk) - (size - cap)])
                    return False
                return sink.feed(chunk)
            finally:
                run.own_s += time.perf_counter() - started

        async def give(data: bytes) -> bool:
            # A piece at a time, each in its turn in the event loop's lane (proxy.slack): a long
            # answer arrives faster than it is mapped, and the part already read (``head``) or
            # chunks buffered meanwhile would otherwise be mapped back to back as one block, holding
            # every other request on the loop (head-of-line) — and a chunk just read would be mapped
            # outside the lane. The wait for a turn is the facade's time too.
            for at in range(0, len(data), CHUNK_BYTES):
                since = time.perf_counter()
                run.own_turns.append(since)
                try:
                    await lane().wait()
                finally:
                    run.own_turns.remove(since)
                    run.own_s += time.perf_counter() - since
                if not take(data[at : at + CHUNK_BYTES]):
                    return False
            return True

        try:
            if await give(head):
                async for chunk in resp.chunks():
                    if not await give(chunk):
                        break
        except TransportError as exc:
            sink.close(complete=False)
            return exc.status, sink, f"{exc.detail}: {PART_MISSING}"
        if size > cap:
            sink.close(complete=False)
            return SourceStatus.INVALID, sink, f"{PART_MISSING}: it is larger than {cap} bytes"
        sink.close(complete=True)  # (or it stopped reading: it says it could not read the answer)
        return SourceStatus.OK, sink, ""


class BackendRun:
    """One backend's share of a fan-out: its requests in flight, then its ``SourceResult``."""

    __slots__ = (
        "client",
        "due",
        "lookup",
        "on_answer",
        "on_done",
        "open_sink",
        "outcomes",
        "own_s",
        "own_turns",
        "partial",
        "pending",
        "result",
        "sent_at",
        "specs",
        "started",
        "tasks",
        "timer",
    )

    def __init__(
        self,
        client: BackendClient,
        specs: Sequence[RequestSpec],
        on_done: Callable[[SourceResult], None] | None,
    ) -> None:
        self.client = client
        self.specs = specs
        self.on_done = on_done
        self.on_answer: OnAnswer | None = None
        self.open_sink: OpenSink | None = None
        self.partial: set[int] = set()  # requests whose answer was cut off mid-way and handed on
        # the facade's own time on this backend's answers as they arrived (sinks: mapping them): it
        # extends the backend's budget (see ``expire``)
        self.own_s = 0.0
        # when the turns its sinks gave the event loop began, while they last (own time going on now)
        self.own_turns: list[float] = []
        self.lookup: int | None = None  # index of the backend's patient lookup among specs
        self.outcomes: list[tuple[SourceStatus, str] | None] = [None] * len(specs)  # (status, detail)
        self.pending = len(specs)
        self.started = time.perf_counter()
        # when each request was sent (it had a connection slot): its budget counts from then
        self.sent_at: list[float | None] = [None] * len(specs)
        self.tasks: list[asyncio.Task[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0  # when the timer is due (perf_counter)
        self.result: SourceResult | None = None

    def sent(self, i: int) -> None:
        """Request ``i`` has its connection slot and goes out now: its budget starts."""
        self.sent_at[i] = now = time.perf_counter()
        if self.timer is None and self.result is None:
            self.arm(now + self.client.settings.total_timeout_s)

    def first_sent(self) -> float:
        return min((t for t in self.sent_at if t is not None), default=self.started)

    def arm(self, due: float) -> None:
        self.due = due
        delay = max(0.0, due - time.perf_counter())
        self.timer = asyncio.get_running_loop().call_later(delay, self.expire)

    def settle(self, result: SourceResult) -> None:
        self.result = result
        if self.timer is not None:
            self.timer.cancel()
        if self.on_done is not None:
            self.on_done(result)

    def expire(self) -> None:
        """A request's budget may have run out: if one sent has been out for all of its budget, cut
        off what is still out and settle as timed out; else wait for the next one due. Fired late by
        a stalled loop, it first gives what came in meanwhile as long again to be read. The facade's
        own time on this backend's answers as they arrived (mapping long ones, ``own_s``) is added to
        the budget: it is not the backend's lateness."""
        self.timer = None
        if self.result is not None:
            return
        now = time.perf_counter()
        if now - self.due > STALL_S:  # (the stall was the facade's: answers may be in, unread)
            self.arm(now + (now - self.due))
            return
        budget = self.client.settings.total_timeout_s
        out = [t for t, o in zip(self.sent_at, self.outcomes, strict=True) if t is not None and o is None]
        if not out:  # every request still out waits for a slot: the timer is armed when one is sent
            return
        own = self.own_s + (now - min(self.own_turns) if self.own_turns else 0.0)
        if now - min(out) < budget + own:
            self.arm(min(out) + budget + own)
            return
        self.abandon(f"no complete answer within {budget:g} s")
        if self.on_done is not None:
            assert self.result is not None
            self.on_done(self.result)

    def cut_off(self, deadline_s: float, at: float, stalled: bool) -> None:
        """The request's deadline (due at ``at``) has passed with this share unfinished. The
        backend's fault when one of its requests still out was sent and had been with it at least
        as long as it had waited in the facade; else the facade's own (see the module's doc)."""
        if self.result is None and stalled:
            self.abandon(NOT_HEARD, its_fault=False, status=SourceStatus.OVERLOADED)
        if self.result is not None:
            return
        out = [t for t, o in zip(self.sent_at, self.outcomes, strict=True) if o is None]
        sent = [t for t in out if t is not None]
        if any(t - self.started <= at - t for t in sent):
            self.abandon(f"did not answer within the request deadline ({deadline_s:g} s)")
        else:
            self.abandon(
                ASKED_TOO_LATE if sent else NOT_ASKED, its_fault=False, status=SourceStatus.OVERLOADED
            )

    def abandon(
        self, detail: str, *, its_fault: bool = True, status: SourceStatus = SourceStatus.TIMEOUT
    ) -> None:
        """Cut off the requests still out. Answers already handed on stay handed on. Cut off at the
        request's deadline or at the end of its own budget (``its_fault``), the backend counts as
        timed out — for the breaker, and as slow, so that it is asked first next time; cut off
        because the request itself was cancelled (its client left), or by the facade's own load,
        it counts as neither."""
        if self.result is not None:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in self.tasks:
            task.cancel()
        latency = (time.perf_counter() - self.first_sent()) * 1000
        if its_fault:
            self.client.breaker.record(success=False)
            self.client.took(latency)
        else:
            self.client.breaker.no_verdict()
        self.result = SourceResult(self.client.settings.name, status, latency, detail)


class _Deadline:
    """Fan-out's deadline: resolves ``done`` when it passes. The facade's own time on answers as
    they arrived (mapping long ones) is not a backend's lateness: it is given back first (as each
    backend's budget is, ``BackendRun.expire``), so the deadline moves on by that much.

    (An object that lets go of its timer when cancelled, not a closure that names itself to re-arm:
    such a closure is a reference cycle that keeps all of the request's runs, tasks and answers
    alive until the garbage collector finds them — tests/test_garbage.py.)"""

    __slots__ = ("_credited", "_done", "_handle", "_loop", "_runs", "due")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runs: Mapping[str, BackendRun],
        done: asyncio.Future[None],
        deadline_s: float,
    ) -> None:
        self._loop, self._runs, self._done = loop, runs, done
        self.due = time.perf_counter() + deadline_s
        self._credited = 0.0
        self._handle: asyncio.TimerHandle | None = loop.call_later(deadline_s, self._passed)

    def _passed(self) -> None:
        owed = sum(run.own_s for run in self._runs.values()) - self._credited
        if owed > 0.001:
            self._credited += owed
            self.due += owed
            self._handle = self._loop.call_later(owed, self._passed)
            return
        self._handle = None
        _resolve(self._done, None)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _rank(status: SourceStatus) -> int:
    order = (SourceStatus.OK, SourceStatus.INVALID, SourceStatus.ERROR, SourceStatus.TIMEOUT)
    return order.index(status)


async def fan_out(
    clients: Mapping[str, BackendClient],
    plan: Mapping[str, Sequence[RequestSpec]],
    contexts: Mapping[str, Context],
    *,
    deadline_s: float,
    on_answer: OnAnswer | None = None,
    open_sink: OpenSink | None = None,
) -> list[SourceResult]:
    """Ask every backend in ``plan`` concurrently; one SourceResult per backend, in plan order.

    When ``deadline_s`` passes, backends still out are abandoned and reported as timed out: the
    answer comes back with what has arrived. ``on_answer`` sees each body that arrives whole as soon
    as it has, so work on one answer overlaps the wait for the others — also the bodies of a backend
    abandoned later, at the deadline. (It should not raise; if it does, that is logged.)
    ``open_sink`` opens the sink an answer larger than ``max_body_bytes`` is read into (see the
    module doc); without it such an answer is refused.
    """
    names = [name for name, specs in plan.items() if specs]
    if not names:
        return []
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    left = len(names)

    def one_done(_: SourceResult) -> None:
        nonlocal left
        left -= 1
        if not left:
            _resolve(all_done, None)

    # the slowest backend's calls first (tasks start in creation order): the answer waits on it
    runs = {
        name: clients[name].start(plan[name], contexts[name], on_answer, one_done, open_sink)
        for name in sorted(names, key=lambda n: clients[n].typical_ms, reverse=True)
    }
    deadline = _Deadline(loop, runs, all_done, deadline_s)
    try:
        await all_done
    except asyncio.CancelledError:  # the request itself was cancelled: no backend is to blame
        for run in runs.values():
            run.abandon("cancelled", its_fault=False)
        raise
    finally:
        deadline.cancel()
    due = deadline.due
    if left:  # the deadline passed: whose fault is each share still out? (BackendRun.cut_off)
        stalled = time.perf_counter() - due > STALL_S
        for run in runs.values():
            run.cut_off(deadline_s, due, stalled)
    results = []
    for name in names:
        result = runs[name].result
        assert result is not None  # settled, or abandoned just above
        results.append(result)
    return results
