"""Hints: notes between services on core NATS, outside JetStream. A hint only saves time: nothing
waits for one and a lost one (no subscriber, a reconnect) changes no result, so they are not stored,
retried or acknowledged.

`restem.hints.<run_id>.policy` (payload: a checkpoint key): the run's next E-step will sample from
this checkpoint. The coordinator sends it when a base model is imported or an M-step finishes and
another E-step follows; sampler replicas download the checkpoint while the run evaluates, so the
E-step does not start with every replica fetching it at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.bus import EventBus
from shared.store.base import validate_key

POLICY = "policy"


def subject(run_id: str, kind: str) -> str:
    return f"restem.hints.{run_id}.{kind}"


async def publish_policy(bus: EventBus, run_id: str, checkpoint_key: str) -> None:
    await bus.client.publish(subject(run_id, POLICY), validate_key(checkpoint_key).encode())


async def on_policy(bus: EventBus, handle: Callable[[str, str], Awaitable[None]]) -> Subscription:
    """Call `handle(run_id, checkpoint_key)` for every policy hint (ill-formed ones are dropped)."""

    async def receive(msg: Msg) -> None:
        parts = msg.subject.split(".")
        try:
            key = validate_key(msg.data.decode())
        except (UnicodeDecodeError, ValueError):
            return
        if len(parts) == 4:
            await handle(parts[2], key)

    return await bus.client.subscribe(subject("*", POLICY), cb=receive)
