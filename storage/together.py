"""Calls made at the same moment, done as one: the reads and writes of many concurrent sends (a
round of the outbox posts dozens of Slack cards at once) become one query or one transaction.

``together = Together(work)``; then ``await together(key)`` from any number of tasks. The keys
gathered while no batch runs go at once; while a batch runs, the next one gathers and goes when
it is done (as a group commit does). ``work(keys)`` returns a value for each key (a key it
leaves out gets None); if it raises, every caller of that batch gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Together(Generic[K, V]):
    def __init__(self, work: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> None:
        self._work = work
        self._gathering: tuple[list[K], asyncio.Future[Mapping[K, V]]] | None = None
        self._one_at_a_time = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, key: K) -> V | None:
        if self._gathering is None:
            loop = asyncio.get_running_loop()
            self._gathering = ([], loop.create_future())
            task = loop.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        keys, done = self._gathering
        if key not in keys:
            keys.append(key)
        return (await asyncio.shield(done)).get(key)

    async def _run(self) -> None:
        async with self._one_at_a_time:  # the next batch gathers meanwhile
            assert self._gathering is not None
            keys, done = self._gathering
            self._gathering = None
            try:
                result = await self._work(keys)
            except Exception as exc:  # noqa: BLE001 - every caller of this batch gets it
                done.set_exception(exc)
            else:
                done.set_result(result)
