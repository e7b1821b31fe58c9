"""Event bus of the restem services: NATS JetStream work queues, events, dead letters and run state.

Covers: the topology (streams ``{prefix}_JOBS`` = work queue of ``restem.jobs.<type>.<run_id>``,
``{prefix}_EVENTS`` = ``restem.events.<run_id>.<kind>`` kept 7 days, ``{prefix}_DLQ`` =
``restem.dlq.<type|events>.<run_id>`` kept 30 days, KV bucket ``{prefix}_runs``), created by every
service (again when NATS lost its volume); publishing with a caller-chosen ``Nats-Msg-Id``; workers
sharing one durable pull consumer per job type, with bounded concurrency, heartbeats, retry with
backoff and dead-lettering; events in order per run; run state with optimistic concurrency
(`shared.kv`); the core-NATS client for hints (`shared.hints`).

NOT provided: exactly-once. Delivery is at-least-once (a crash, a lost ack or an ack_wait expiry
redelivers), so handlers must be idempotent. ``Nats-Msg-Id`` dedupes *publishes* only, and only
within the stream's duplicate_window (10 minutes). Jobs are not ordered, not even within a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors as jserr
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from shared import abandon, nats_connect, telemetry
from shared.delivery import (
    H_DELIVERED,
    H_REASON,
    H_SUBJECT,
    JOB_TYPES,
    AbandonIf,
    DeadLetter,
    Delivery,
    Handler,
    PermanentError,
    RetryPolicy,
    Settle,
    check_job_type,
    check_token,
    header_safe,
    redact_url,
)
from shared.infra import NatsConfig
from shared.kv import ConflictError, RunStateKV
from shared.ordering import KeyedOrder, ModelSlot

__all__ = ["JOB_TYPES", "ConflictError", "DeadLetter", "Delivery", "EventBus", "PermanentError"]

log = logging.getLogger("restem.bus")

_DUPLICATE_WINDOW_S = 10 * 60.0
_EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
DLQ_MAX_AGE_S = 30 * 24 * 3600.0  # long enough to inspect and replay by hand; bounded, so it ages out
_FETCH_TIMEOUT_S = 0.5  # also bounds how long `stop` takes to be noticed
_FILE = api.StorageType.FILE  # streams survive a NATS restart
_ABANDON_POLL_S = 2.0  # how often a running job's run is looked up
_JOB_RUN_ID_INDEX = 3  # restem.jobs.<type>.<run_id>
_EVENT_RUN_ID_INDEX = 2  # restem.events.<run_id>.<kind>
_Sub = JetStreamContext.PullSubscription


class EventBus:
    """Facade over one NATS connection: streams, publishers, workers, dead letters and run-state KV."""

    _nc: NATS  # these three are set by `connect`, the only way to get a usable bus
    _js: JetStreamContext
    _kv: RunStateKV

    def __init__(self, config: NatsConfig, name: str) -> None:
        self._config = config
        self._name = name
        self._connected_once = False
        self._last_error: Exception | None = None
        p = config.prefix
        self.jobs_stream, self.events_stream, self.dlq_stream = f"{p}_JOBS", f"{p}_EVENTS", f"{p}_DLQ"
        self.runs_bucket = f"{p}_runs"

    @classmethod
    async def connect(cls, config: NatsConfig, *, name: str) -> EventBus:
        bus = cls(config, name)
        bus._nc = await nats_connect.connect(bus._config, bus._name, bus)
        bus._js = bus._nc.jetstream()
        bus._kv = RunStateKV(bus._nc, bus._js, bus.runs_bucket)
        return bus

    def on_connected(self) -> None:
        self._connected_once = True
        telemetry.NATS_CONNECTED.set(1)

    def last_error(self) -> Exception | None:
        return self._last_error

    async def on_error(self, err: Exception) -> None:
        # Kept as the cause for the connect error (nats-py only raises "no servers available").
        self._last_error = err
        what, level = type(err).__name__, logging.WARNING if self._connected_once else logging.DEBUG
        log.log(level, "NATS error: %s", f"{what}: {err}" if str(err) else what)

    async def on_disconnected(self) -> None:
        telemetry.NATS_CONNECTED.set(0)
        if hasattr(self, "_nc") and not self._nc.is_closed:
            telemetry.NATS_DISCONNECTS.inc()
            log.warning("disconnected from NATS at %s; reconnecting", redact_url(self._config.url))

    async def on_reconnected(self) -> None:
        telemetry.NATS_CONNECTED.set(1)
        telemetry.NATS_RECONNECTS.inc()
        log.info("reconnected to NATS at %s", redact_url(self._config.url))

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    @property
    def runs(self) -> RunStateKV:
        """The run records (KV ``{prefix}_runs``): get, create, update (compare-and-set), entries, watch."""
        return self._kv

    @property
    def client(self) -> NATS:
        return self._nc

    async def close(self) -> None:
        await self._nc.close()  # flushes pending acks/publishes first; a no-op when already closed

    async def ensure_topology(self) -> None:
        """Create or update the streams and the KV bucket; safe to run concurrently from every service."""
        work, limits = api.RetentionPolicy.WORK_QUEUE, api.RetentionPolicy.LIMITS
        # (name, subject, retention, max_age); the DLQ dedupes too: dead letters carry an id.
        for name, subject, retention, max_age in (
            (self.jobs_stream, "restem.jobs.>", work, None),
            (self.events_stream, "restem.events.>", limits, _EVENTS_MAX_AGE_S),
            (self.dlq_stream, "restem.dlq.>", limits, DLQ_MAX_AGE_S),
        ):
            config = api.StreamConfig(name=name, subjects=[subject], retention=retention, max_age=max_age)
            await self._ensure_stream(config.evolve(duplicate_window=_DUPLICATE_WINDOW_S, storage=_FILE))
        await self._kv.ensure()

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        # Creating a stream that exists with the same config succeeds, which makes concurrent
        # startup of several services safe; a different config answers 10058 (name in use): updated.
        try:
            await self._js.add_stream(config)
            return
        except jserr.BadRequestError as err:
            if err.err_code != 10058:
                raise
        try:
            await self._js.update_stream(config)
        except jserr.APIError as err:
            raise RuntimeError(f"stream {config.name} exists with an incompatible config: {err}") from err
        log.warning("stream %s existed with another config; updated it", config.name)

    async def publish_job(self, job_type: str, run_id: str, data: bytes, *, msg_id: str) -> bool:
        check_job_type(job_type)
        check_token("run_id", run_id)
        return await self._publish(f"restem.jobs.{job_type}.{run_id}", data, msg_id, self.jobs_stream)

    async def publish_event(self, run_id: str, kind: str, data: bytes, *, msg_id: str) -> bool:
        check_token("run_id", run_id)
        check_token("kind", kind)
        return await self._publish(f"restem.events.{run_id}.{kind}", data, msg_id, self.events_stream)

    async def _publish(
        self, subject: str, data: bytes, msg_id: str, stream: str, headers: dict[str, str] | None = None
    ) -> bool:
        """Publish and wait for the stream's ack; True if stored, False if deduplicated."""
        if not msg_id:
            raise ValueError("msg_id must be a non-empty string")
        hdrs = {**(headers or {}), api.Header.MSG_ID.value: msg_id}
        # A retry is safe because the msg id dedupes it; it rides out a short NATS restart.
        for delay in (0.5, 1.0, None):
            try:
                ack = await self._js.publish(subject, data, headers=hdrs, stream=stream)
                break
            except (nats.errors.TimeoutError, jserr.NoStreamResponseError) as err:
                if delay is None:
                    raise
                log.warning("publish to %s failed (%s); retrying", subject, err)
                await asyncio.sleep(delay)
        return not ack.duplicate

    async def run_worker(
        self,
        job_type: str,
        handler: Handler,
        *,
        stop: asyncio.Event,
        concurrency: int = 1,
        ack_wait_s: float = 60.0,
        max_deliver: int = 5,
        backoff_s: Sequence[float] = (1, 5, 15, 30),
        abandon_if: AbandonIf | None = None,
        pipelined: bool = False,
    ) -> None:
        """Handle `job_type` jobs until `stop` is set, then drain. Call ensure_topology first.

        With `abandon_if`, a job whose run is over is not started, and a running one is abandoned
        within `_ABANDON_POLL_S` (see `shared.abandon`); either way its message is terminated.
        `pipelined`: see `shared.ordering.ModelSlot` (the sampler's next job is pulled when its
        model is free, while the last job still writes its output)."""
        check_job_type(job_type)
        if concurrency < 1 or max_deliver < 1 or ack_wait_s <= 0:
            raise ValueError("concurrency and max_deliver must be >= 1 and ack_wait_s > 0")
        policy = RetryPolicy(
            durable=f"{job_type}-workers",
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            backoff_s=tuple(backoff_s),
            dlq_token=job_type,
            run_id_index=_JOB_RUN_ID_INDEX,
            abandon_if=abandon_if,
        )
        consumer = api.ConsumerConfig(filter_subject=f"restem.jobs.{job_type}.>")
        slot = ModelSlot() if pipelined else None
        await self._consume(self.jobs_stream, consumer, handler, stop, concurrency, policy, slot=slot)

    async def consume_events(
        self,
        durable: str,
        handler: Handler,
        *,
        stop: asyncio.Event,
        filter_subject: str = "restem.events.>",
        ack_wait_s: float = 10.0,
        max_deliver: int = 10,
        backoff_s: Sequence[float] = (1, 5, 15, 30),
        concurrency: int = 1,
        window: int | None = None,
    ) -> None:
        """Handle events until `stop`: `concurrency` at once, one run's one at a time in stream order.

        With `concurrency` 1 the order is strict, retries included. Above 1, `window` events are taken
        at once (a run's backlog holds up other runs only once it fills the window) and a retried
        event may come back after its run's later ones. `ack_wait_s` only bounds how long a dead
        consumer's events stay unseen: a live handler (or one waiting its turn) sends heartbeats."""
        window = window or concurrency
        if concurrency < 1 or window < concurrency:
            raise ValueError("concurrency must be >= 1 and window >= concurrency")
        check_token("durable", durable)
        if not filter_subject.startswith("restem.events."):
            raise ValueError(f"filter_subject must be under restem.events., got {filter_subject!r}")
        policy = RetryPolicy(
            durable=durable,
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            backoff_s=tuple(backoff_s),
            dlq_token="events",
            run_id_index=_EVENT_RUN_ID_INDEX,
        )
        # max_ack_pending = window: with 1 the server hands out the next event only after this one
        # is acked, so order holds even while an event is retried after a nak.
        consumer = api.ConsumerConfig(filter_subject=filter_subject, max_ack_pending=window)
        order = KeyedOrder(limit=concurrency)
        await self._consume(self.events_stream, consumer, handler, stop, window, policy, order)

    async def _subscribe(self, stream: str, consumer: api.ConsumerConfig, policy: RetryPolicy) -> _Sub:
        durable = policy.durable
        config = consumer.evolve(
            name=durable,
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=policy.ack_wait_s,
            # One extra delivery so a message whose worker died on the last attempt comes back once
            # more, only to be dead-lettered instead of staying in the work queue for ever.
            max_deliver=policy.max_deliver + 1,
        )
        # Create-or-update: replicas racing here with the same config all succeed, and a new
        # release's settings (ack_wait, max_deliver) replace the old ones.
        for delay in (1.0, 2.0, 4.0, None):  # ride out a NATS blip while the service starts
            try:
                await self._js.add_consumer(stream, config)
                break
            except (nats.errors.TimeoutError, jserr.ServiceUnavailableError) as err:
                if delay is None:
                    raise
                log.warning("creating consumer %s failed (%s); retrying", durable, err)
                await asyncio.sleep(delay)
        return await self._js.pull_subscribe_bind(durable=durable, stream=stream)

    async def _consume(
        self,
        stream: str,
        consumer: api.ConsumerConfig,
        handler: Handler,
        stop: asyncio.Event,
        concurrency: int,
        policy: RetryPolicy,
        order: KeyedOrder | None = None,
        slot: ModelSlot | None = None,
    ) -> None:
        """Fetch and handle until `stop`; with `order`, messages of one run are handled in order;
        with `slot`, one message at a time, each once the slot is free (it is the message's job's)."""
        sub = await self._subscribe(stream, consumer, policy)
        guard = nats_connect.ConsumerGuard(
            self._js, stream, policy.durable, lambda: self._subscribe(stream, consumer, policy)
        )
        inflight: set[asyncio.Task[None]] = set()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = concurrency - len(inflight)
                if free == 0:
                    await asyncio.wait({*inflight, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if slot is not None and not await slot.claim(stopper):
                    break
                msgs = await self._fetch(sub, policy.durable, free if slot is None else 1)
                if slot is not None and not msgs:
                    slot.release()
                if msgs is None:
                    break
                if not msgs and (fresh := await guard.recovered(self.ensure_topology)) is not None:
                    sub = fresh  # NATS lost its volume: streams and consumer rebuilt
                for msg in msgs:
                    work = self._process(msg, handler, policy)
                    if order is not None:
                        work = order.run(
                            self._run_id(msg, policy), work, self._keep_alive(msg, policy.ack_wait_s / 3)
                        )
                    task = slot.start(work) if slot is not None else asyncio.create_task(work)
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
            if inflight:  # drain: let running handlers finish and ack
                await asyncio.gather(*inflight, return_exceptions=True)
        finally:
            stopper.cancel()
            for task in inflight:  # only left when we are cancelled: the "process" dies
                task.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(self, sub: _Sub, consumer: str, batch: int) -> list[Msg] | None:
        """Up to `batch` messages; [] when none came in time; None when the connection is closed."""
        try:
            return await sub.fetch(batch, timeout=_FETCH_TIMEOUT_S)
        except (TimeoutError, nats.errors.TimeoutError):
            return []  # the normal idle case
        except nats.errors.ConnectionClosedError:
            log.warning("NATS connection closed; worker on %s stops", consumer)
            return None
        except Exception as err:
            # e.g. mid-reconnect or the consumer briefly unavailable; keep going.
            log.warning("fetch from %s failed: %s; retrying", consumer, err)
            await asyncio.sleep(1.0)
            return []

    @staticmethod
    def _run_id(msg: Msg, policy: RetryPolicy) -> str:
        tokens = msg.subject.split(".")
        return tokens[policy.run_id_index] if len(tokens) > policy.run_id_index else ""

    async def _process(self, msg: Msg, handler: Handler, policy: RetryPolicy) -> None:
        meta = msg.metadata
        n = meta.num_delivered
        run_id = self._run_id(msg, policy)
        delivery = Delivery(msg.subject, msg.data, (msg.headers or {}).get("Nats-Msg-Id"), n, run_id)
        if n > policy.max_deliver:  # the last attempt's worker died or timed out without settling
            why = "last error unknown (worker died or timed out)"
            await self._dead_letter(
                msg, delivery, policy, f"exceeded max_deliver={policy.max_deliver}; {why}"
            )
            return
        if policy.abandon_if is not None and await self._run_over(policy.abandon_if, run_id):
            log.info("dropping %s: its run %s is over", delivery.subject, run_id)
            await self._settle(msg, Settle.TERM)
            return
        heartbeat = asyncio.create_task(self._keep_alive(msg, policy.ack_wait_s / 3))
        flag = threading.Event()
        try:
            with abandon.scope(flag):
                work: asyncio.Future[None] = asyncio.ensure_future(handler(delivery))
            watcher = (
                asyncio.create_task(self._watch_run(policy.abandon_if, run_id, flag, work))
                if policy.abandon_if is not None
                else None
            )
            try:
                await work
            finally:
                if watcher is not None:
                    watcher.cancel()
        except (asyncio.CancelledError, abandon.Abandoned):
            if not flag.is_set():
                raise  # the worker itself is being cancelled (shutdown), not the job
            log.info("abandoned %s: its run %s is over", delivery.subject, run_id)
            await self._settle(msg, Settle.TERM)
            return
        except PermanentError as err:
            await self._dead_letter(msg, delivery, policy, f"permanent error: {err}")
            return
        except Exception as err:
            await self._on_failure(msg, delivery, policy, err)
            return
        finally:
            heartbeat.cancel()
        await self._settle(msg, Settle.ACK)

    async def _on_failure(self, msg: Msg, delivery: Delivery, policy: RetryPolicy, err: Exception) -> None:
        """Nak with backoff, or dead-letter when this was the last allowed delivery."""
        n = delivery.num_delivered
        log.error("handler failed on %s (try %d/%d)", delivery.subject, n, policy.max_deliver, exc_info=err)
        if n >= policy.max_deliver:
            # Dead-letter now, with the real error, instead of one more round trip and a vaguer reason.
            reason = f"failed {n} deliveries (max_deliver={policy.max_deliver}); last error: {err!r}"
            await self._dead_letter(msg, delivery, policy, reason)
            return
        await self._settle(msg, Settle.NAK, delay=policy.backoff(n))

    @staticmethod
    async def _run_over(abandon_if: AbandonIf, run_id: str) -> bool:
        try:
            return bool(run_id) and await abandon_if(run_id)
        except Exception as err:  # NATS down: keep working; the run state is looked up again later
            log.debug("could not look up run %s: %s", run_id, err)
            return False

    async def _watch_run(
        self, abandon_if: AbandonIf, run_id: str, flag: threading.Event, work: asyncio.Future[None]
    ) -> None:
        while not work.done():
            await asyncio.sleep(_ABANDON_POLL_S)
            if await self._run_over(abandon_if, run_id):
                flag.set()  # first, so the thread's next check() raises and `work` is seen as abandoned
                work.cancel()
                return

    async def _keep_alive(self, msg: Msg, interval_s: float) -> None:
        # +WPI resets the server's ack_wait timer so a long handler (training) is not redelivered.
        while True:
            await asyncio.sleep(interval_s)
            try:
                await msg.in_progress()
            except Exception as err:
                log.warning("in_progress for %s failed: %s", msg.subject, err)

    async def _dead_letter(self, msg: Msg, delivery: Delivery, policy: RetryPolicy, reason: str) -> None:
        meta = msg.metadata
        n = delivery.num_delivered
        headers = {H_REASON: header_safe(reason), H_SUBJECT: delivery.subject, H_DELIVERED: str(n)}
        subject = f"restem.dlq.{policy.dlq_token}.{delivery.run_id or 'unknown'}"
        # The id makes a second dead-lettering of the same message (term lost, crash) a no-op.
        dedupe_id = f"dlq-{meta.stream}-{meta.sequence.stream}"
        try:
            await self._publish(subject, delivery.data, dedupe_id, self.dlq_stream, headers)
        except Exception as err:
            log.error("could not dead-letter %s (%s); will retry on redelivery", delivery.subject, err)
            await self._settle(msg, Settle.NAK, delay=policy.backoff(delivery.num_delivered))
            return
        log.warning("dead-lettered %s: %s", delivery.subject, reason)
        await self._settle(msg, Settle.TERM)

    async def _settle(self, msg: Msg, how: Settle, delay: float = 0.0) -> None:
        """Ack, nak or term; a failure only means the message will be delivered again."""
        try:
            if how is Settle.ACK:
                await msg.ack_sync(timeout=5.0)  # sync: a lost ack would mean a duplicate run
            elif how is Settle.NAK:
                await msg.nak(delay=delay or None)
            else:
                await msg.term()
        except Exception as err:
            log.warning("%s of %s failed (%s); it will be redelivered", how.value, msg.subject, err)

    async def purge_jobs(self, run_id: str) -> int:
        check_token("run_id", run_id)
        total = 0
        for job_type in JOB_TYPES:
            # nats-py's purge_stream returns only a bool; the raw API reply has the count.
            request = json.dumps({"filter": f"restem.jobs.{job_type}.{run_id}"}).encode()
            reply = await self._nc.request(f"$JS.API.STREAM.PURGE.{self.jobs_stream}", request, timeout=5.0)
            body = json.loads(reply.data)
            if "error" in body:
                jserr.APIError.from_error(body["error"])  # raises
            total += int(body.get("purged", 0))
        return total

    async def dead_letters(self, run_id: str | None = None, *, after_seq: int = 0) -> list[DeadLetter]:
        """Dead letters (of one run, or all) stored after stream sequence `after_seq`, oldest first."""
        subject = "restem.dlq.>" if run_id is None else f"restem.dlq.*.{check_token('run_id', run_id)}"
        letters: list[DeadLetter] = []
        seq = after_seq + 1
        while True:  # walk the stream with "next message matching subject at or after seq"
            try:
                raw = await self._js.get_msg(self.dlq_stream, seq=seq, subject=subject, next=True)
            except jserr.NotFoundError:
                return letters
            headers = {k: str(v) for k, v in (raw.headers or {}).items()}
            subj, reason = headers.get(H_SUBJECT, raw.subject or ""), headers.get(H_REASON, "")
            seq, delivered = int(raw.seq or seq), int(headers.get(H_DELIVERED, "0"))
            letters.append(DeadLetter(subj, raw.data or b"", reason, delivered, seq))
            seq += 1
