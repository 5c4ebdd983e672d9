"""The outbox's delivery: each target backend is sent its part of an accepted write, exactly once.

A write is accepted only once it is in the store's outbox (``proxy.pipeline.write``): the
transaction, and one *part* per target holding that target's requests (already rendered in its
dialect). Any worker of any host delivers: it *claims* due parts for a lease (``Store.claim``: no
other claimer gets them while it runs), sends each request of a part in order with its
``Idempotency-Key``, and records the outcome — only while it still holds the lease:

- every request answered 2xx: **delivered**;
- refused — a 4xx other than 408, 425 and 429 (the target will not take it as it is): **parked**,
  with the status and which request as the reason (the ones before it stay delivered: a target
  undoes nothing); it is never sent again by itself;
- anything else — 5xx, 408/425/429, no answer in time, no connection: **retried** after a backoff
  with full jitter (``backoff``), until ``max_attempts`` sends; then parked, with the last reason.

Each claim counts an attempt, also one whose worker died before it recorded anything: a part that
kills its worker every time (or one sent from a host that keeps dying) is parked once its attempts
are spent, not claimed for ever.

The lease bounds one request, not the part: before a request, when less of it is left than the
request may take (the target's ``total_s``), it is renewed — so a long part to a slow target is not
cut off and sent again from the start for ever, and a short part to a fast target costs no renewal.
A worker that finds its lease taken over (it stalled past it) stops sending.

Exactly once: a part is marked delivered only after its target acknowledged every request; a worker
killed in between leaves the part leased, and once the lease runs out another claims it and sends
it again — the same requests with the same keys, which the target has seen and answers as before
without writing twice. The reasons recorded name the target and a status, never the content.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Mapping

from proxy.clock import Clock
from proxy.fanout.client import BackendClient
from proxy.fanout.transport import TransportError
from proxy.settings import LEASE_USE, OutboxSettings
from proxy.store.base import OutboxPart, OutboxTransaction, PartRequest, Store, StoreUnavailable, backoff

log = logging.getLogger("fhir_facade.outbox")

DELIVERED, PENDING, PARKED = "delivered", "pending", "parked"
_TRANSIENT_4XX = frozenset({408, 425, 429})  # (time-out, too early, too many: try again later)
_ANSWER_CAP = 1 << 20  # an acknowledgement is small: read at most this much of it


class Refused(Exception):
    """The target will not take the request as it is (a 4xx): parked, never retried by itself."""


class Transient(Exception):
    """The target could not take it now (a 5xx, a time-out, no connection): tried again later."""


class Delivery:
    """The delivery loop of one worker: ``run`` until cancelled; ``nudge`` when a part was queued."""

    def __init__(
        self,
        store: Store,
        clients: Mapping[str, BackendClient],
        settings: OutboxSettings,
        clock: Clock,
        worker: str,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store, self.clients, self.settings, self.clock, self.worker = (
            store,
            clients,
            settings,
            clock,
            worker,
        )
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever this worker settled a part
        # the parts being sent now, each its own task: a slow target's parts do not hold up the
        # claiming of the others' (at most ``claim_limit`` at once)
        self._sending: set[asyncio.Task[None]] = set()
        self._parts: set[str] = set()  # the ids of the parts being sent

    def nudge(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled, whatever goes wrong: a loop that died would leave every later write
        pending for ever."""
        try:
            while True:
                self._wake.clear()  # (before looking: a part queued while it looks wakes the next turn)
                try:
                    worked = await self.once()
                except StoreUnavailable as exc:  # (the store is down: try again after a pause)
                    log.warning("outbox: %s", exc)
                    worked = 0
                except Exception:  # (a bug, or an error the store does not translate: logged, not fatal)
                    log.exception("outbox: delivering failed; trying again")
                    worked = 0
                if not worked:
                    # (asyncio.timeout, not wait_for: Python 3.11's wait_for may swallow the task's
                    # cancellation when the event is set at that moment — the loop then never stops)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.poll_s):
                            await self._wake.wait()
        finally:  # (stopped: what is being sent is left to its lease, and another worker)
            for sending in self._sending:
                sending.cancel()
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def once(self) -> int:
        """Claim as many due parts as there is room for and start sending each; how many."""
        room = self.settings.claim_limit - len(self._sending)
        if room <= 0:
            return 0  # (a part that finishes wakes the loop)
        now = self.clock.time()
        claimed = await self.store.claim(now, self.settings.lease_s, room, self.worker)
        for _, part in claimed:
            if part.id in self._parts:  # (this worker still sends it, stalled past its lease: not twice)
                continue
            if part.attempts > self.settings.max_attempts:  # (the last ones never reported back)
                reason = (
                    f"gave up after {part.attempts - 1} attempts (the last reported no outcome: the"
                    " worker sending it stopped)"
                )
                try:
                    await self.store.park(part.id, reason, self.worker)
                except StoreUnavailable as exc:  # (the others of the claim are still started)
                    log.warning("outbox: %s", exc)
                    continue
                log.warning("outbox: a part for %s was parked: %s", part.target, reason)
                continue
            leased_until = now + self.settings.lease_s
            sending = asyncio.create_task(self._deliver(part, leased_until), name="outbox part")
            self._sending.add(sending)
            self._parts.add(part.id)
            sending.add_done_callback(functools.partial(self._sent, part.id))
        return len(claimed)

    def _sent(self, part_id: str, sending: asyncio.Task[None]) -> None:
        self._sending.discard(sending)
        self._parts.discard(part_id)
        self._wake.set()  # (room for another part)

    async def _deliver(self, part: OutboxPart, leased_until: float) -> None:
        try:
            await self._deliver_part(part, leased_until)
        except StoreUnavailable as exc:  # (its outcome not recorded: the lease runs out, it is sent again)
            log.warning("outbox: %s", exc)
        except Exception:
            log.exception("outbox: a part for %s failed unexpectedly", part.target)

    async def _deliver_part(self, part: OutboxPart, leased_until: float) -> None:
        s = self.settings
        reserve = s.lease_s * (1 - LEASE_USE)  # (left at the end: to renew the lease, or record the outcome)
        client = self.clients.get(part.target)
        longest = min(client.settings.total_timeout_s, s.lease_s * LEASE_USE) if client else 0.0
        at = 0  # the request being sent (those before it: acknowledged)
        try:
            for request in part.requests:
                # Within the lease: past it another worker may claim the part and send it as well.
                # Less of it left than a request may take: renewed first (it bounds one request, not
                # the part; a short part to a fast target never needs it).
                left = leased_until - self.clock.time() - reserve
                if left < longest:
                    leased_until = self.clock.time() + s.lease_s
                    renewed = await self.store.renew(part.id, leased_until, self.worker)
                    left = leased_until - self.clock.time() - reserve  # (the store may have been slow)
                    if not renewed or left <= 0:
                        # (another worker has the part now, or may take it any moment: it sends the
                        # rest, and records the outcome)
                        log.warning("outbox: lost the lease on a part for %s while sending it", part.target)
                        return
                async with asyncio.timeout(left):
                    await self._send(part.target, request)
                at += 1
        except TimeoutError:
            exc = Transient(f"{part.target}: request {at + 1} was not answered within the part's lease")
            await self._retry_or_park(part, exc)
        except Refused as exc:
            # what the target holds of the part: the requests before the refused one (never undone)
            n = len(part.requests)
            held = f"the {at} before it were delivered" if at else "none of the part was delivered"
            reason = f"{exc} at request {at + 1} of {n}: {held}"
            await self.store.park(part.id, reason, self.worker)
            log.warning("outbox: a part for %s was refused: %s", part.target, exc)
        except Transient as exc:
            await self._retry_or_park(part, exc)
        else:
            await self.store.delivered(part.id, self.clock.time(), self.worker)
        self._settled.set()

    async def _retry_or_park(self, part: OutboxPart, exc: Transient) -> None:
        s = self.settings
        if part.attempts >= s.max_attempts:  # (this claim's attempt counted)
            reason = f"gave up after {part.attempts} attempts (last: {exc})"
            await self.store.park(part.id, reason, self.worker)
            log.warning("outbox: a part for %s was parked: %s", part.target, reason)
        else:
            wait = backoff(part.attempts, s.backoff_base_s, s.backoff_cap_s, self.rng)
            await self.store.retry(part.id, self.clock.time() + wait, str(exc), self.worker)

    async def _send(self, target: str, request: PartRequest) -> None:
        client = self.clients.get(target)
        if client is None:  # (a target taken out of the configuration since)
            raise Refused(f"{target} is not a configured backend")
        headers = {**dict(request.headers), "Idempotency-Key": request.idempotency_key}
        try:
            async with asyncio.timeout(client.settings.total_timeout_s):
                async with client.transport.request(
                    request.method, client.base + request.path, headers=headers, body=request.body
                ) as resp:
                    status = resp.status
                    await resp.read(_ANSWER_CAP)
        except TimeoutError:
            raise Transient(f"{target} did not answer in time") from None
        except TransportError as exc:
            raise Transient(f"{target}: {exc.detail}") from None
        except Exception:  # (read past the cap, or a bug: not the target's fault; try again later)
            log.exception("outbox: sending to %s failed", target)
            raise Transient(f"{target}: failed unexpectedly") from None
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in _TRANSIENT_4XX:
            raise Refused(f"{target} refused it (HTTP {status})")
        raise Transient(f"{target} answered HTTP {status}")

    async def settled(self, transaction: str, wait_s: float) -> OutboxTransaction | None:
        """The transaction once every part is delivered or parked, or as it is after ``wait_s``."""
        deadline = self.clock.monotonic() + wait_s
        while True:
            txn = await self.store.outbox_transaction(transaction)
            if txn is None or all(p.state != PENDING for p in txn.parts):
                return txn
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return txn
            self._settled.clear()
            with contextlib.suppress(TimeoutError):  # (another worker may settle it: look again soon)
                async with asyncio.timeout(min(left, 0.05)):
                    await self._settled.wait()
