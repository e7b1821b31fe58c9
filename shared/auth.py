"""Bearer-token access control for the gRPC APIs of the five services.

One shared token (a Kubernetes Secret in the chart, a file under the state directory in the local
stack) guards every RPC: a call must carry ``authorization: Bearer <token>`` metadata, compared in
constant time. Health (``grpc.health.v1``) and reflection stay open so probes and ``grpcurl list``
work without it. With ``grpc.public_reads`` the read-only methods (``Get*``, ``List*``,
``Watch*``) are open too, for dashboards; mutating ones (StartRun, CancelRun, Verify...) never are.

The same token authenticates services to each other (the evaluator calls the verifier): the client
interceptor here adds the header to every call of a channel.

Not covered: per-user identities, scopes, TLS (put a TLS-terminating proxy or a mesh in front; a
bearer token over plain TCP is visible to anyone on the path) and token rotation without restart.
The token is never logged nor put in an error message.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from shared.infra import GrpcConfig

log = logging.getLogger("restem.auth")

TOKEN_ENV = "RESTEM_API_TOKEN"
TOKEN_FILE_ENV = "RESTEM_API_TOKEN_FILE"
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_READ_PREFIXES = ("Get", "List", "Watch")
HINT = (
    "send 'authorization: Bearer <token>' metadata (restem CLI: --token-file FILE or "
    f"${TOKEN_ENV} / ${TOKEN_FILE_ENV}; the token is the grpc.auth_token the services were given)"
)


class TokenError(ValueError):
    """The configured token cannot be used; the message says what to set."""


def read_token_file(path: Path) -> str:
    """The token in `path`, stripped of surrounding whitespace (a trailing newline is common)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read the API token file {path}: {exc.strerror}; fix the path") from None
    if not token:
        raise TokenError(f"the API token file {path} is empty; put the token in it")
    return token


def server_token(config: GrpcConfig) -> str | None:
    """The token a server requires: `auth_token_file` wins over `auth_token`; None = open."""
    if config.auth_token_file is not None:
        return read_token_file(config.auth_token_file)
    if config.auth_token is not None:
        token = config.auth_token.get_secret_value().strip()
        if not token:
            raise TokenError("grpc.auth_token is empty; set a token or leave it unset")
        return token
    return None


def client_token(token_file: Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The token a client sends: `token_file`, else $RESTEM_API_TOKEN_FILE, else $RESTEM_API_TOKEN."""
    env = os.environ if environ is None else environ
    if token_file is None and env.get(TOKEN_FILE_ENV):
        token_file = Path(env[TOKEN_FILE_ENV])
    if token_file is not None:
        return read_token_file(token_file)
    return env.get(TOKEN_ENV, "").strip() or None


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (empty when there is none)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _is_open(method: str, public_reads: bool) -> bool:
    if method.startswith(_OPEN_SERVICES):
        return True
    return public_reads and method.rsplit("/", 1)[-1].startswith(_READ_PREFIXES)


def check(method: str, invocation_metadata: Any, token: str, *, public_reads: bool = False) -> str | None:
    """None if the call may proceed, else the reason it may not (without the token in it)."""
    if _is_open(method, public_reads):
        return None
    given = [v for k, v in invocation_metadata or () if k == "authorization"]
    if not given:
        return f"{method} needs a bearer token: {HINT}"
    value = given[0] if isinstance(given[0], str) else given[0].decode("latin-1")
    scheme, _, presented = value.partition(" ")
    # compare_digest on bytes: constant time in the token's content, so timing leaks nothing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return f"{method}: the bearer token is wrong; {HINT}"
    return None


def _denied(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny, **kwargs)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right bearer token with UNAUTHENTICATED (see the module doc)."""

    def __init__(self, token: str, *, public_reads: bool = False) -> None:
        if not token:
            raise TokenError("an empty API token would let anyone in; set a non-empty token")
        self._token = token
        self._public_reads = public_reads

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        reason = check(
            method, handler_call_details.invocation_metadata, self._token, public_reads=self._public_reads
        )
        handler = await continuation(handler_call_details)
        if reason is None or handler is None:  # None: unknown method, gRPC answers UNIMPLEMENTED
            return handler
        log.warning("refused %s: %s", method, reason.split(":", 1)[0] if "needs" in reason else "wrong token")
        return _denied(handler, reason)


class _AddToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._md = metadata(token)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(details.metadata or ()), *self._md)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, md, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


# Round robin over every address the name resolves to: with `dns:///<headless service>:<port>`,
# calls spread over all replicas instead of one HTTP/2 connection pinned to one pod.
SPREAD_OPTIONS = [("grpc.lb_policy_name", "round_robin")]


def aio_channel(address: str, token: str | None, **kwargs: Any) -> grpc.aio.Channel:
    """An insecure aio channel that sends `token` on every unary and server-streaming call and
    spreads calls over every address of `address` (see SPREAD_OPTIONS)."""
    interceptors = [_AddToken(token)] if token else None
    options = [*SPREAD_OPTIONS, *kwargs.pop("options", [])]
    return grpc.aio.insecure_channel(address, interceptors=interceptors, options=options, **kwargs)
