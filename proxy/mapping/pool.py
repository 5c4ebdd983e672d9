"""Long answers mapped in worker processes (``facade.map_workers``): the event loop only waits.

Mapping is the facade's largest cost per record (decoding the body, running the compiled builders,
reading each resource's references). In the event loop, sliced as it is (``proxy.slack``), a long
history's answers still take the loop's time from every other request on the worker: three
20,000-record requests kept one loop at 94 % of a core, and a small patient's request, which needs a
dozen turns of that loop, waited a slice at each. A ``MapPool`` maps an answer of at least
``map_from_bytes`` in one of its processes instead; the loop sends the body and receives the mapped
resources (pickled: a few milliseconds for thousands of them — a twentieth of mapping them). The
processes run at a lower priority (``nice``), so the machine's cores go to the event loops (and the
backends beside them) first and to long histories with what is left.

The result is exactly ``map_answer``'s (the same function runs in the process, on mappings
compiled from the same settings and key); tests/mapping/test_pool.py compares them. Each process
compiles the deployment's mappings once, at start; what it logs is written by its worker (its
handlers, its format); it ends when its worker has gone, killed or not. A process that dies fails
the answers it was mapping as unreadable (the source is degraded, never empty) and the pool is
opened again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from proxy.mapping.registry import MappingSet
from proxy.mapping.requests import Context
from proxy.mapping.run import MappedAnswer, map_answer
from proxy.mapping.stream import AnswerStream
from proxy.slack import Steps

log = logging.getLogger(__name__)

NICE = 10  # how much lower the processes' priority is than the event loop's
# An answer too large to read whole is held (bytes) for a process up to this; past it, it is mapped
# as it arrives, in the loop (proxy.mapping.stream), as without a pool: memory stays bounded.
HOLD_BYTES = 64 * 1024 * 1024
LONG_BYTES = 256 * 1024  # a long answer is at least this (and 4 × map_from_bytes)
WATCH_S = 1.0  # how often a process looks whether its worker is still there

_mappings: MappingSet | None = None  # (in a pool process: the deployment's mappings)


def _start(
    compile_mappings: Callable[..., MappingSet], args: tuple[object, ...], logs: Any, level: int
) -> None:
    """A pool process starts: its log records sent to ``logs`` (the worker's queue: written there,
    in the worker's format), the deployment's mappings compiled once (``compile_mappings`` is a
    module's function, pickled by name)."""
    global _mappings
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C stops the server, which stops the pool)
    to_worker = QueueHandler(logs)
    to_worker.setFormatter(logging.Formatter("%(message)s"))  # (the worker's handlers format it)
    logging.basicConfig(level=level, handlers=[to_worker], force=True)
    try:
        os.nice(NICE)
    except OSError:  # (not allowed here: the same priority, still off the loop)
        pass
    parent = os.getppid()
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="parent watch").start()
    _mappings = compile_mappings(*args)


def _watch(parent: int) -> None:
    """A pool process ends when its worker has gone (killed: nothing told it), instead of waiting
    for work that will never come."""
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os._exit(0)


class _ToLoggers(logging.Handler):
    """In the worker: a pool process's log record handed to its logger there (and so written by
    the worker's handlers, in its format)."""

    def handle(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
        return True


def _ready() -> bool:
    return _mappings is not None


def _map(
    backend: str, whole_key: str, body: bytes, ctx: Context, source_uri: str, priority: int
) -> tuple[MappedAnswer, float]:
    """In a pool process: ``map_answer``, and the milliseconds it took (the queue's wait not in it)."""
    assert _mappings is not None
    started = time.perf_counter()
    readers = _mappings.readers.get((backend, whole_key), ())
    mapped = map_answer(body, readers, ctx, source_uri=source_uri, priority=priority)
    return mapped, (time.perf_counter() - started) * 1000


class MapPool:
    """``workers`` processes that map answers of at least ``from_bytes``; an answer too large to
    read whole is held for them up to ``hold_bytes`` (``HeldAnswer``)."""

    def __init__(
        self,
        compile_mappings: Callable[..., MappingSet],
        args: tuple[object, ...],
        workers: int,
        from_bytes: int,
        hold_bytes: int = HOLD_BYTES,
    ) -> None:
        self.from_bytes = from_bytes
        self.hold_bytes = hold_bytes
        self._workers = workers
        self._args = (compile_mappings, args)
        # answers of long_bytes or more are long: with two or more processes, one is kept for the rest
        self.long_bytes = max(4 * from_bytes, LONG_BYTES)
        self._busy = 0  # answers the processes are mapping (or whose turn has come)
        self._long = 0  # of which long
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # (size, order, its turn)
        self._order = itertools.count()
        self.mapped = 0  # answers mapped in the processes
        self._context = multiprocessing.get_context("spawn")
        self._logs: Any = self._context.Queue()  # the processes' log records, written here
        self._listener = QueueListener(self._logs, _ToLoggers())
        self._listener.start()
        self._pool = self._open()

    def _open(self) -> Executor:
        # spawn: a fresh interpreter, not a fork of a process with an event loop and threads
        return ProcessPoolExecutor(
            self._workers,
            mp_context=self._context,
            initializer=_start,
            initargs=(*self._args, self._logs, logging.getLogger().getEffectiveLevel()),
        )

    async def start(self) -> None:
        """The processes started, and one at least with its mappings compiled (the first answer
        does not wait for a process to start)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _ready) for _ in range(self._workers)))

    async def map(
        self, backend: str, whole_key: str, body: bytes, ctx: Context, *, source_uri: str, priority: int
    ) -> tuple[MappedAnswer, float]:
        """The answer mapped in a process, and the milliseconds mapping it took there. The shortest
        answer waiting goes first, and of two or more processes at most all but one map long
        answers (``long_bytes``) at once: a modest answer waits for what the processes are mapping,
        never behind a queue of long histories — with two processes, never behind a long one."""
        long = len(body) >= self.long_bytes
        if self._fits(long):
            self._take(long)
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (len(body), next(self._order), turn))
            try:
                await turn  # (its place taken for it: _next)
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # (its turn had come: pass it on)
                    self._release(long)
                raise
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            job = pool.submit(_map, backend, whole_key, body, ctx, source_uri, priority)
        except BaseException as exc:  # (never submitted: its place is given on)
            self._release(long)
            if isinstance(exc, BrokenProcessPool):
                return self._broken(pool, backend)
            raise
        # a process is free again when its job ends, not when its asker stops waiting for it
        job.add_done_callback(lambda _: self._released(loop, long))
        try:
            done = await asyncio.wrap_future(job)
        except BrokenProcessPool:
            return self._broken(pool, backend)
        self.mapped += 1
        return done

    def _broken(self, pool: Executor, backend: str) -> tuple[MappedAnswer, float]:
        log.error("a mapping process died: an answer from %s is unreadable", backend)
        if pool is self._pool:  # (the first of its answers to hear it opens a new pool)
            pool.shutdown(wait=False)
            self._pool = self._open()
        return MappedAnswer([], readable=False), 0.0

    def _released(self, loop: asyncio.AbstractEventLoop, long: bool) -> None:
        with contextlib.suppress(RuntimeError):  # (the loop has closed: nobody is waiting)
            loop.call_soon_threadsafe(self._release, long)

    def _fits(self, long: bool) -> bool:
        """Whether an answer may start now: a process is free — and for a long one, not the last."""
        if self._busy >= self._workers:
            return False
        return not long or self._workers == 1 or self._long < self._workers - 1

    def _take(self, long: bool) -> None:
        self._busy += 1
        self._long += long

    def _release(self, long: bool) -> None:
        self._busy -= 1
        self._long -= long
        self._next()

    def _next(self) -> None:
        waiting = self._waiting
        while waiting:
            size, _, turn = waiting[0]
            if turn.done():  # (its asker left)
                heapq.heappop(waiting)
                continue
            long = size >= self.long_bytes
            if not self._fits(long):  # (the shortest does not fit: nor does any longer one)
                return
            heapq.heappop(waiting)
            self._take(long)
            turn.set_result(None)

    async def close(self) -> None:
        """The processes stopped: what is waiting is dropped, what they are mapping is finished
        first (a second or so at most: one answer each)."""
        pool = self._pool
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(pool.shutdown, wait=True, cancel_futures=True)
            )
        finally:
            self._listener.stop()
            self._logs.close()


class PoolJob:
    """An answer being mapped in a process, as the walk's jobs go: waited for, or dropped."""

    __slots__ = ("_task",)

    def __init__(self, work: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.ensure_future(work)

    async def run_in_turns(self) -> None:
        await asyncio.shield(self._task)

    def drop(self) -> None:
        self._task.cancel()


class HeldAnswer:
    """An answer too large to read whole (``AnswerSink``), held for a mapping process: ``body``
    once it has arrived whole. Past ``limit`` bytes, or cut off, it becomes an ``AnswerStream``
    (``stream``) — exactly what the answer makes without a pool: a cut answer keeps what arrived
    whole, a document that stops being one stops the reading. What was held is fed to the stream a
    piece at a time, never at once (a 64 MiB backlog would be seconds of one block): two pieces for
    each one that arrives, so the backlog shrinks as the answer goes on, and what is left of it when
    the answer ends a piece a step of the mapping job (``steps``)."""

    __slots__ = ("_backlog", "_complete", "_held", "_limit", "_open_stream", "body", "stream")

    def __init__(self, limit: int, open_stream: Callable[[], AnswerStream]) -> None:
        self._limit = limit
        self._open_stream = open_stream
        self._backlog: deque[bytes] = deque()  # held, or not yet fed to the stream
        self._held = 0
        self._complete = False
        self.body: bytes | None = None
        self.stream: AnswerStream | None = None

    def feed(self, chunk: bytes) -> bool:
        self._backlog.append(chunk)
        if self.stream is None:
            self._held += len(chunk)
            if self._held <= self._limit:
                return True
            self.stream = self._open_stream()
        return self._catch_up(2)

    def close(self, complete: bool) -> None:
        if self.stream is None and complete:
            self.body = b"".join(self._backlog)
            self._backlog.clear()
            return
        if self.stream is None:
            self.stream = self._open_stream()
        self._complete = complete  # (the stream is closed once the backlog is fed: steps)

    def steps(self) -> Steps[None]:
        """What is left of the backlog fed a piece a step, then the stream closed (its answer ready)."""
        assert self.stream is not None
        while self._backlog and self._catch_up(1):
            yield
        self._backlog.clear()
        self.stream.close(self._complete)

    def _catch_up(self, pieces: int) -> bool:
        assert self.stream is not None
        backlog = self._backlog
        for _ in range(pieces):
            if not backlog:
                break
            if not self.stream.feed(backlog.popleft()):
                backlog.clear()  # (it cannot be read: nothing more is wanted)
                return False
        return True
