"""Connecting to NATS: the initial retry schedule, credentials, then reconnecting for ever.

Also here: `ConsumerGuard`, which notices a worker's consumer lost with the NATS volume.
NOT here: what the connection is used for (`shared.bus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Protocol

import nats.errors
import nats.js.errors as jserr
from nats.aio.client import Client as NATS

from shared.delivery import redact_url
from shared.infra import NatsConfig

log = logging.getLogger("restem.bus")


class ConnectionEvents(Protocol):
    """Who hears about the connection: errors (the last one explains a failed connect), drops, returns."""

    def on_connected(self) -> None: ...
    def last_error(self) -> Exception | None: ...
    async def on_error(self, err: Exception) -> None: ...
    async def on_disconnected(self) -> None: ...
    async def on_reconnected(self) -> None: ...


async def connect(cfg: NatsConfig, name: str, events: ConnectionEvents) -> NATS:
    """Connect within 6 x connect_timeout_s, retrying with jittered backoff; wrong credentials fail at once."""
    url = redact_url(cfg.url)
    total_s = cfg.connect_timeout_s * 6
    loop = asyncio.get_running_loop()
    deadline, delay, attempt = loop.time() + total_s, 0.25, 0
    while True:
        attempt += 1
        try:
            return await _connect_once(cfg, name, events)
        except (TimeoutError, OSError, nats.errors.Error) as err:
            # nats-py raises a plain Error for a bad password here; retrying cannot fix credentials.
            if isinstance(err, nats.errors.AuthorizationError) or "authorization" in str(err).lower():
                raise ConnectionError(
                    f"NATS at {url} rejected the credentials of user {cfg.user!r} (authorization failed)"
                ) from None
            remaining, cause = deadline - loop.time(), events.last_error() or err
            if remaining <= 0:
                raise ConnectionError(
                    f"could not connect to NATS at {url} after {attempt} attempts in {total_s:.0f}s: {cause}"
                ) from err
            log.info("NATS at %s not reachable yet (attempt %d): %s", url, attempt, cause)
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))  # jitter
            delay = min(delay * 2, 5.0)


async def _connect_once(cfg: NatsConfig, name: str, events: ConnectionEvents) -> NATS:
    nc = NATS()
    try:
        # allow_reconnect=False makes a failed first attempt raise instead of looping for ever
        # inside nats-py; our caller owns the retry schedule for the initial connect.
        await nc.connect(
            servers=[s.strip() for s in cfg.url.split(",")],
            name=name,
            user=cfg.user,
            password=cfg.password.get_secret_value() if cfg.password else None,
            token=cfg.token.get_secret_value() if cfg.token else None,
            connect_timeout=cfg.connect_timeout_s,  # type: ignore[arg-type]  # nats-py says int, takes float
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,  # type: ignore[arg-type]
            error_cb=events.on_error,
            disconnected_cb=events.on_disconnected,
            reconnected_cb=events.on_reconnected,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    # Once connected, reconnect for ever: a NATS restart must never kill a service.
    nc.options.update(allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=2)
    events.on_connected()
    log.info("connected to NATS at %s as %s", redact_url(cfg.url), name)
    return nc


class ConsumerGuard:
    """Notices, while a worker idles, that its durable consumer is gone: the NATS volume was lost
    (or the stream deleted by hand). Fetching from a missing consumer only ever times out, so the
    consumer is looked up at most every `every_s` seconds of idling; `recovered` then recreates the
    topology and subscribes again instead of waiting for ever."""

    def __init__(self, js: Any, stream: str, durable: str, subscribe: Any, every_s: float = 10.0) -> None:
        """`subscribe()` creates the consumer and returns the new subscription."""
        self.js, self.stream, self.durable, self.subscribe = js, stream, durable, subscribe
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    async def recovered(self, ensure_topology: Any) -> Any:
        """The new subscription when the consumer was lost and is rebuilt now, else None."""
        if not await self.lost():
            return None
        log.warning(
            "consumer %s of %s is gone (NATS lost its data?); recreating it", self.durable, self.stream
        )
        try:
            await ensure_topology()
            return await self.subscribe()
        except Exception as exc:  # NATS still failing: looked at again after the next idle period
            log.warning("could not recreate consumer %s: %s", self.durable, exc)
            return None

    async def lost(self) -> bool:
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.every_s
        try:
            await self.js.consumer_info(self.stream, self.durable)
        except jserr.NotFoundError:
            return True
        except Exception:  # NATS down or slow: the reconnect logic handles that, not this
            return False
        return False
