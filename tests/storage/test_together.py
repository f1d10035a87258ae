"""storage.together: concurrent calls gathered into one piece of work (the Slack desk's card
reads and root marks of a round of sends)."""

from __future__ import annotations

import asyncio

from frontdesk.storage.together import Together


async def test_calls_at_the_same_moment_are_one_batch_and_the_next_gathers_meanwhile() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def work(keys: list[int]) -> dict[int, str]:
        batches.append(list(keys))
        if len(batches) == 1:
            await release.wait()  # while the first batch runs, the next calls gather
        return {k: f"card {k}" for k in keys if k != 3}

    together = Together(work)
    first = [asyncio.create_task(together(k)) for k in (1, 2, 2)]
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(together(k)) for k in (3, 4, 5)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*first) == ["card 1", "card 2", "card 2"]
    assert await asyncio.gather(*later) == [None, "card 4", "card 5"]  # 3: left out
    assert batches == [[1, 2], [3, 4, 5]]


async def test_a_batch_that_fails_fails_each_of_its_callers_and_the_next_one_works() -> None:
    calls = 0

    async def work(keys: list[str]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the store went away")
        return {k: len(k) for k in keys}

    together = Together(work)
    results = await asyncio.gather(together("a"), together("bb"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await together("ccc") == 3
    assert calls == 2
