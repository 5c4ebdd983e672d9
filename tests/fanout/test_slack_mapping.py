"""Answers that arrive while others are out are mapped in the event loop's slack; the request maps
whatever the slack has not reached when its last answer is in, and drops it when it is cancelled
(that one over the in-memory transport: test_memory_transport.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxy.edge.http import FACADE_KEY
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import fetch_and_map, plan_requests
from proxy.slack import SlackJob, SlackQueue, Steps
from proxy.types import SourceStatus

TOLVAN = "191212121212"


class _Stalled(SlackQueue):
    """A loop so busy that its slack never comes: jobs wait until their owner runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred: list[SlackJob] = []
        self.ran = 0

    def defer(self, work: Callable[[], Steps[None] | None]) -> SlackJob:
        def counted() -> Steps[None] | None:
            self.ran += 1
            return work()

        job = SlackJob(counted)
        self.deferred.append(job)
        return job


def _facade(running: Any, slack: SlackQueue) -> Facade:
    return replace(running.client.server.app[FACADE_KEY], slack=slack)


async def test_answers_the_slack_never_reached_are_mapped_by_the_request_itself(facade: Any) -> None:
    async with facade() as f:
        live = _facade(f, SlackQueue())
        patient = live.ids.patient(TOLVAN)
        types = live.mappings.resource_types
        normal, normal_outcomes = await fetch_and_map(live, patient, types)
        stalled = _Stalled()
        mapped, outcomes = await fetch_and_map(_facade(f, stalled), patient, types)
    assert normal and [(o.source, o.status) for o in normal_outcomes] == [
        (name, SourceStatus.OK) for name in ("cosmic", "viva", "npo")
    ]
    assert sorted(r.resource["id"] for r in mapped) == sorted(r.resource["id"] for r in normal)
    assert [(o.source, o.status) for o in outcomes] == [(o.source, o.status) for o in normal_outcomes]
    assert stalled.deferred and stalled.ran == len(stalled.deferred)  # every answer, mapped once
    assert not any(job.run() for job in stalled.deferred)


async def test_how_long_each_answer_took_to_map_is_learnt_per_request(facade: Any) -> None:
    async with facade() as f:
        live = _facade(f, SlackQueue())
        await fetch_and_map(live, live.ids.patient(TOLVAN), live.mappings.resource_types)
        learnt = {name: dict(client.handling_ms) for name, client in live.clients.items()}
    for name, specs in plan_requests(live.mappings, learnt, live.mappings.resource_types).items():
        assert set(learnt[name]) == {spec.key for spec in specs}, name  # every answer, and only those
        assert all(ms > 0.0 for ms in learnt[name].values())
