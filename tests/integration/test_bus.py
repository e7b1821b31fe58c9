"""shared.bus against a real nats-server: topology, delivery guarantees, dead letters, KV, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import nats
import pytest
from nats.js import api
from pydantic import SecretStr

import shared.bus
from shared import abandon
from shared.bus import ConflictError, DeadLetter, Delivery, EventBus, PermanentError
from shared.infra import NatsConfig

pytestmark = pytest.mark.integration

FAST = {"ack_wait_s": 1.0, "backoff_s": (0.05,)}


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def until_dead_letters(bus: EventBus, count: int, run_id: str | None = None) -> list[DeadLetter]:
    deadline = time.monotonic() + 10
    while len(letters := await bus.dead_letters(run_id)) < count:
        assert time.monotonic() < deadline, f"timed out waiting for {count} dead letters, have {letters}"
        await asyncio.sleep(0.05)
    return letters


@contextlib.asynccontextmanager
async def running(
    work: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a worker in the background; on exit set its stop event and wait for it to drain."""
    stop = asyncio.Event()
    task = asyncio.create_task(work(stop))
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 15)
        elif not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]


async def stream_info(config: NatsConfig, stream: str) -> api.StreamInfo:
    nc = await nats.connect(config.url)
    try:
        return await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()


async def jobs_left(config: NatsConfig) -> int:
    return (await stream_info(config, f"{config.prefix}_JOBS")).state.messages


def recorder(seen: list[Delivery], fail: Callable[[Delivery], Any] | None = None):
    async def handler(d: Delivery) -> None:
        seen.append(d)
        if fail is not None:
            fail(d)

    return handler


# ---------------------------------------------------------------------------- topology


async def test_topology_is_idempotent_and_concurrent(nats_config: NatsConfig) -> None:
    # Streams and buckets left by an older release with another config are updated, not an error.
    nc = await nats.connect(nats_config.url)
    await nc.jetstream().add_stream(name="TEST_EVENTS", subjects=["restem.events.>"], duplicate_window=60)
    await nc.jetstream().create_key_value(bucket="TEST_runs", history=1)
    await nc.close()
    buses = [await EventBus.connect(nats_config, name=f"svc-{i}") for i in range(4)]
    await asyncio.gather(*(b.ensure_topology() for b in buses))  # every service at startup, at once
    await buses[0].ensure_topology()
    await buses[0].ensure_topology()

    jobs = await stream_info(nats_config, "TEST_JOBS")
    assert jobs.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert jobs.config.storage == api.StorageType.FILE and jobs.config.duplicate_window == 600
    events = await stream_info(nats_config, "TEST_EVENTS")
    assert events.config.max_age == 7 * 24 * 3600 and events.config.duplicate_window == 600
    assert (await stream_info(nats_config, "TEST_DLQ")).config.subjects == ["restem.dlq.>"]
    assert (await stream_info(nats_config, "KV_TEST_runs")).config.max_msgs_per_subject == 5
    for b in buses:
        await b.close()


async def test_publish_validates_subject_tokens(bus: EventBus) -> None:
    with pytest.raises(ValueError, match="job type"):
        await bus.publish_job("nope", "r1", b"", msg_id="m")
    for bad in ("a.b", "a b", "", "*", ">"):
        with pytest.raises(ValueError, match="run_id"):
            await bus.publish_job("sample", bad, b"", msg_id="m")
    with pytest.raises(ValueError, match="kind"):
        await bus.publish_event("r1", "x.y", b"", msg_id="m")


# ---------------------------------------------------------------------------- delivery


async def test_publish_dedupe_gives_one_delivery(bus: EventBus, nats_config: NatsConfig) -> None:
    assert await bus.publish_job("sample", "run-1", b"job", msg_id="sample-run-1-0") is True
    assert await bus.publish_job("sample", "run-1", b"job", msg_id="sample-run-1-0") is False
    seen: list[Delivery] = []
    async with running(lambda stop: bus.run_worker("sample", recorder(seen), stop=stop, **FAST)):
        await until(lambda: len(seen) == 1, what="the delivery")
        await asyncio.sleep(1.0)
    assert [(d.run_id, d.msg_id, d.num_delivered, d.data) for d in seen] == [
        ("run-1", "sample-run-1-0", 1, b"job")
    ]
    assert seen[0].subject == "restem.jobs.sample.run-1"
    assert await jobs_left(nats_config) == 0


async def test_failed_handler_gets_redelivery_then_ack(bus: EventBus, nats_config: NatsConfig) -> None:
    seen: list[Delivery] = []

    def crash_first(d: Delivery) -> None:
        if d.num_delivered == 1:
            raise RuntimeError("simulated crash")

    await bus.publish_job("verify", "r1", b"x", msg_id="v1")
    async with running(lambda stop: bus.run_worker("verify", recorder(seen, crash_first), stop=stop, **FAST)):
        await until(lambda: len(seen) == 2, what="the redelivery")
    assert [d.num_delivered for d in seen] == [1, 2]
    assert await jobs_left(nats_config) == 0
    assert await bus.dead_letters() == []


async def kill_worker_mid_job(config: NatsConfig, job_type: str, run_id: str, **worker: Any) -> None:
    """A worker (own connection) takes a job, then its process dies: no ack, no nak, no term."""
    doomed = await EventBus.connect(config, name="doomed")
    started = asyncio.Event()

    async def block_forever(d: Delivery) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(doomed.run_worker(job_type, block_forever, stop=asyncio.Event(), **worker))
    await doomed.publish_job(job_type, run_id, b"job", msg_id=f"{job_type}-{run_id}")
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await doomed.close()


async def test_dead_worker_message_goes_to_another_worker(bus: EventBus, nats_config: NatsConfig) -> None:
    await kill_worker_mid_job(nats_config, "train", "r1", ack_wait_s=1.0)
    seen: list[Delivery] = []
    t0 = time.monotonic()
    async with running(lambda stop: bus.run_worker("train", recorder(seen), stop=stop, ack_wait_s=1.0)):
        await until(lambda: len(seen) == 1, what="redelivery to the survivor")
    assert seen[0].num_delivered == 2
    assert time.monotonic() - t0 < 5
    assert await jobs_left(nats_config) == 0


async def test_in_progress_keeps_long_handler_from_redelivery(bus: EventBus, nats_config: NatsConfig) -> None:
    seen: list[Delivery] = []

    async def slow(d: Delivery) -> None:
        seen.append(d)
        await asyncio.sleep(3.0)  # 3 x ack_wait

    await bus.publish_job("train", "r1", b"t", msg_id="t1")
    # concurrency=2: a redelivery during the sleep would be fetched by this very worker.
    async with running(lambda stop: bus.run_worker("train", slow, stop=stop, concurrency=2, ack_wait_s=1.0)):
        await until(lambda: len(seen) == 1)
        await asyncio.sleep(4.0)
    assert [d.num_delivered for d in seen] == [1]
    assert await jobs_left(nats_config) == 0


# ---------------------------------------------------------------------------- dead letters


async def test_permanent_error_dead_letters_at_once(bus: EventBus, nats_config: NatsConfig) -> None:
    seen: list[Delivery] = []

    def reject(d: Delivery) -> None:
        raise PermanentError("bad input: no prompts")

    await bus.publish_job("prepare", "r7", b"payload", msg_id="p1")
    async with running(lambda stop: bus.run_worker("prepare", recorder(seen, reject), stop=stop, **FAST)):
        letters = await until_dead_letters(bus, 1, "r7")
    assert len(letters) == 1
    assert letters[0].subject == "restem.jobs.prepare.r7" and letters[0].data == b"payload"
    assert "bad input: no prompts" in letters[0].reason and letters[0].num_delivered == 1
    assert len(seen) == 1 and await jobs_left(nats_config) == 0
    assert await bus.dead_letters("other") == []


async def test_always_failing_ends_in_dlq(bus: EventBus, nats_config: NatsConfig) -> None:
    seen: list[Delivery] = []

    def boom(d: Delivery) -> None:
        raise ValueError("flaky GPU é")

    await bus.publish_job("eval", "r2", b"e", msg_id="e1")
    await bus.publish_job("eval", "r3", b"e", msg_id="e2")
    work = recorder(seen, boom)
    async with running(lambda stop: bus.run_worker("eval", work, stop=stop, max_deliver=2, **FAST)):
        letters = await until_dead_letters(bus, 2)
    assert sorted(dl.subject for dl in letters) == ["restem.jobs.eval.r2", "restem.jobs.eval.r3"]
    assert all("flaky GPU" in dl.reason and dl.num_delivered == 2 for dl in letters)
    assert len(seen) == 4 and await jobs_left(nats_config) == 0


async def test_worker_dying_on_last_attempt_is_dead_lettered(bus: EventBus, nats_config: NatsConfig) -> None:
    await kill_worker_mid_job(nats_config, "sample", "r9", max_deliver=1, ack_wait_s=1.0)
    seen: list[Delivery] = []
    work = recorder(seen)
    async with running(lambda stop: bus.run_worker("sample", work, stop=stop, max_deliver=1, ack_wait_s=1.0)):
        letters = await until_dead_letters(bus, 1, "r9")
    assert len(letters) == 1 and "max_deliver=1" in letters[0].reason and letters[0].num_delivered == 2
    assert seen == []  # the handler is not run past max_deliver
    assert await jobs_left(nats_config) == 0


# ---------------------------------------------------------------------------- sharing, purge, events


async def test_two_workers_share_the_durable_consumer(bus: EventBus, nats_config: NatsConfig) -> None:
    other = await EventBus.connect(nats_config, name="replica-2")
    handled: list[tuple[str, str | None]] = []

    def handler_for(name: str) -> Callable[[Delivery], Awaitable[None]]:
        async def handle(d: Delivery) -> None:
            handled.append((name, d.msg_id))
            await asyncio.sleep(0.05)

        return handle

    for i in range(30):
        await bus.publish_job("sample", f"r{i % 3}", b"%d" % i, msg_id=f"job-{i}")
    async with (
        running(lambda stop: bus.run_worker("sample", handler_for("a"), stop=stop, concurrency=2)),
        running(lambda stop: other.run_worker("sample", handler_for("b"), stop=stop, concurrency=2)),
    ):
        await until(lambda: len(handled) >= 30)
        await asyncio.sleep(0.5)
    assert sorted(m for _, m in handled) == sorted(f"job-{i}" for i in range(30))  # each exactly once
    assert {n for n, _ in handled} == {"a", "b"}
    assert await jobs_left(nats_config) == 0
    await other.close()


async def test_purge_jobs_removes_only_that_run(bus: EventBus, nats_config: NatsConfig) -> None:
    for job_type in ("prepare", "sample", "train"):
        await bus.publish_job(job_type, "doomed", b"", msg_id=f"{job_type}-doomed")
    await bus.publish_job("sample", "kept", b"", msg_id="sample-kept")
    await bus.publish_job("sample", "doomed-not", b"", msg_id="sample-doomed-not")
    assert await bus.purge_jobs("doomed") == 3
    assert await bus.purge_jobs("doomed") == 0
    info = await stream_info(nats_config, "TEST_JOBS")
    assert info.state.messages == 2


async def test_consume_events_in_order_even_with_retries(bus: EventBus) -> None:
    calls: list[tuple[bytes, int]] = []

    async def handler(d: Delivery) -> None:
        calls.append((d.data, d.num_delivered))
        assert d.run_id == "r1"
        if d.data == b"3" and d.num_delivered == 1:
            raise RuntimeError("transient")
        await asyncio.sleep(0.01)

    for i in range(8):
        await bus.publish_event("r1", "sample_done", b"%d" % i, msg_id=f"ev-{i}")
    async with running(lambda stop: bus.consume_events("coordinator", handler, stop=stop, backoff_s=(0.2,))):
        await until(lambda: len(calls) == 9)
    expected = [(b"%d" % i, 1) for i in range(8)]
    expected.insert(4, (b"3", 2))  # the retry of 3 comes before 4: one at a time, in order
    assert calls == expected


async def test_consume_events_runs_apart_concurrently_and_each_run_in_order(bus: EventBus) -> None:
    # Run "slow"'s first event blocks until run "fast" has all its events handled: with one event
    # at a time this would never finish. Within each run the order is the stream's.
    fast_done = asyncio.Event()
    order: dict[str, list[bytes]] = {"slow": [], "fast": []}

    async def handler(d: Delivery) -> None:
        order[d.run_id].append(d.data)
        if d.run_id == "slow" and d.data == b"0":
            await asyncio.wait_for(fast_done.wait(), timeout=10)
        await asyncio.sleep(0.002 * (hash(d.data) % 5))  # uneven handler times must not reorder a run
        if d.run_id == "fast" and len(order["fast"]) == 10:
            fast_done.set()

    for i in range(10):
        for run in ("slow", "fast"):
            await bus.publish_event(run, "sample_done", b"%d" % i, msg_id=f"{run}-{i}")
    async with running(
        lambda stop: bus.consume_events("coordinator", handler, stop=stop, concurrency=2, window=32)
    ):
        await until(lambda: len(order["slow"]) == len(order["fast"]) == 10)
    assert order["slow"] == order["fast"] == [b"%d" % i for i in range(10)]


async def test_dead_letters_read_from_a_sequence_and_age_out(bus: EventBus, nats_config: NatsConfig) -> None:
    async def fail(d: Delivery) -> None:
        raise PermanentError("bad job")

    await bus.publish_job("eval", "r4", b"e", msg_id="d1")
    async with running(lambda stop: bus.run_worker("eval", fail, stop=stop, **FAST)):
        first = await until_dead_letters(bus, 1)
        await bus.publish_job("eval", "r5", b"e", msg_id="d2")
        both = await until_dead_letters(bus, 2)
    newer = await bus.dead_letters(after_seq=first[0].seq)
    assert [dl.subject for dl in newer] == ["restem.jobs.eval.r5"] and newer[0].seq > first[0].seq
    assert await bus.dead_letters(after_seq=both[-1].seq) == []
    nc = await nats.connect(nats_config.url)
    info = await nc.jetstream().stream_info(bus.dlq_stream)
    await nc.close()
    assert info.config.max_age == shared.bus.DLQ_MAX_AGE_S


# ---------------------------------------------------------------------------- KV


async def test_kv_create_get_update_keys_watch(bus: EventBus) -> None:
    assert await bus.runs.keys() == []
    assert await bus.runs.get("run-1") is None
    rev1 = await bus.runs.create("run-1", b"v1")
    with pytest.raises(ConflictError):
        await bus.runs.create("run-1", b"again")
    assert await bus.runs.get("run-1") == (b"v1", rev1)
    rev2 = await bus.runs.update("run-1", b"v2", revision=rev1)
    assert rev2 > rev1
    with pytest.raises(ConflictError):
        await bus.runs.update("run-1", b"stale", revision=rev1)
    await bus.runs.create("run-2", b"x")
    assert await bus.runs.keys() == ["run-1", "run-2"]

    seen: list[tuple[bytes, int]] = []

    async def watch() -> None:
        async with contextlib.aclosing(bus.runs.watch("run-1")) as updates:
            async for item in updates:
                seen.append(item)
                if len(seen) == 3:
                    return

    watcher = asyncio.create_task(watch())
    await until(lambda: len(seen) == 1, what="the current value")
    rev3 = await bus.runs.update("run-1", b"v3", revision=rev2)
    await bus.runs.create("run-3", b"another key: not in this watch")
    rev4 = await bus.runs.update("run-1", b"v4", revision=rev3)
    await asyncio.wait_for(watcher, 5)
    assert seen == [(b"v2", rev2), (b"v3", rev3), (b"v4", rev4)]


async def test_kv_keys_lists_a_key_as_soon_as_it_is_written_and_skips_deleted_ones(
    bus: EventBus, nats_config: NatsConfig
) -> None:
    # Read-after-write, many times over: nats-py's own keys() could miss a fresh key (its watcher
    # trusts a pending count of 0 before the pushed messages are read), which let a duplicate run
    # name through under load.
    for i in range(40):
        await bus.runs.create(f"run-{i:02d}", b"x" * 2000)
        assert await bus.runs.keys() == [f"run-{j:02d}" for j in range(i + 1)]
    other = await nats.connect(nats_config.url)
    try:
        handle = await other.jetstream().key_value(bus.runs_bucket)
        await handle.delete("run-07")
        await handle.purge("run-08")
    finally:
        await other.close()
    left = [f"run-{j:02d}" for j in range(40) if j not in (7, 8)]
    assert await bus.runs.keys() == left
    entries = await bus.runs.entries()
    assert [key for key, _, _ in entries] == left
    assert [(value, revision) for key, value, revision in entries] == [
        await bus.runs.get(key) for key in left
    ]
    assert all(value == b"x" * 2000 for _, value, _ in entries)


# ---------------------------------------------------------------------------- connection


async def test_auth_right_and_wrong_password(nats_server_auth: Any) -> None:
    url, user, password = nats_server_auth.url, nats_server_auth.user, nats_server_auth.password
    good = NatsConfig(url=url, user=user, password=SecretStr(password), prefix="TEST")
    b = await EventBus.connect(good, name="auth-ok")
    assert b.connected
    await b.ensure_topology()
    await b.close()

    wrong = "Wr0ng-Secret-Value"
    bad = NatsConfig(url=url, user=user, password=SecretStr(wrong), prefix="TEST", connect_timeout_s=1)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await EventBus.connect(bad, name="auth-bad")
    assert time.monotonic() - t0 < 3  # bad credentials are not retried
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
    assert url in str(caught.value) and "credentials" in str(caught.value)
    assert wrong not in text and password not in text


async def test_unreachable_server_gives_clear_error(nats_server: Any) -> None:
    nats_server.stop()
    config = NatsConfig(
        url=f"nats://u:hidden-pw@127.0.0.1:{nats_server.port}", prefix="TEST", connect_timeout_s=0.2
    )
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await EventBus.connect(config, name="nobody-home")
    assert 1.0 <= time.monotonic() - t0 < 5
    assert f"127.0.0.1:{nats_server.port}" in str(caught.value)
    assert "hidden-pw" not in str(caught.value)


async def test_nats_restart_keeps_jobs_and_reconnects(bus: EventBus, nats_server: Any) -> None:
    trained: list[Delivery] = []
    sampled: list[Delivery] = []
    async with running(lambda stop: bus.run_worker("train", recorder(trained), stop=stop)):
        await bus.publish_job("train", "r1", b"warm-up", msg_id="t-warm-up")
        await until(lambda: len(trained) == 1, what="the train worker to be up")
        await bus.publish_job("sample", "r1", b"before", msg_id="s-before")  # nobody consumes it yet
        nats_server.stop()
        await until(lambda: not bus.connected, what="the disconnect")
        nats_server.start()
        await until(lambda: bus.connected, timeout=15, what="the reconnect")
        # The train worker started before the restart keeps working after it.
        assert await bus.publish_job("train", "r1", b"after", msg_id="t-after")
        await until(lambda: len(trained) == 2, timeout=15, what="the post-restart job")
        async with running(lambda stop: bus.run_worker("sample", recorder(sampled), stop=stop)):
            await until(lambda: len(sampled) == 1, what="the pre-restart job")
    assert sampled[0].data == b"before" and trained[1].data == b"after"


# ---------------------------------------------------------------------------- abandoning jobs of ended runs


async def test_a_job_of_an_ended_run_is_dropped_and_a_running_one_abandoned(
    bus: EventBus, nats_config: NatsConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.bus, "_ABANDON_POLL_S", 0.1)
    over: set[str] = {"ended"}
    steps: dict[str, int] = {}
    started: list[str] = []

    async def is_over(run_id: str) -> bool:
        return run_id in over

    def long_loop(run_id: str) -> None:  # a generate/training loop in a thread, checking once per step
        for _ in range(400):
            abandon.check()
            steps[run_id] = steps.get(run_id, 0) + 1
            time.sleep(0.02)

    async def handler(d: Delivery) -> None:
        started.append(d.run_id)
        await asyncio.to_thread(long_loop, d.run_id)

    await bus.publish_job("sample", "ended", b"x", msg_id="s-ended")
    await bus.publish_job("sample", "live", b"x", msg_id="s-live")
    async with running(lambda stop: bus.run_worker("sample", handler, stop=stop, abandon_if=is_over, **FAST)):
        await until(lambda: steps.get("live", 0) >= 5, what="the live job to be running")
        over.add("live")  # the run is cancelled while its job runs
        at_cancel = steps["live"]
        await asyncio.sleep(1.0)
        stopped_at = steps["live"]
        await asyncio.sleep(0.5)
        assert steps["live"] == stopped_at, "the thread kept working after the run ended"
        assert stopped_at < at_cancel + 25  # stopped within ~ one poll, far from its 400 steps
        await bus.publish_job("sample", "next", b"x", msg_id="s-next")
        await until(lambda: steps.get("next", 0) >= 1, what="the worker to take the next job")
        over.add("next")
    assert "ended" not in started, "a job of a run that had ended was started"
    assert started.count("live") == 1, "an abandoned job was delivered again"
    assert await jobs_left(nats_config) == 0
    assert await bus.dead_letters() == []
