"""What every gRPC call passes through before (and around) its handler.

* **Who is calling.** `authorization: Bearer <token>` is checked against the configured tokens
  for every method but health (UNAUTHENTICATED without a valid one; PERMISSION_DENIED when the
  token's role does not allow the method). The caller is then available to the handler through
  `current_caller()`.
* **Limits.** Each caller has a request rate and a number of concurrent streams
  (RESOURCE_EXHAUSTED beyond them).
* **Undecodable requests.** Bytes that are not the method's request message (bad wire format,
  invalid UTF-8 in a string field) are INVALID_ARGUMENT, never UNKNOWN.
* **Unexpected errors.** Anything that is not one of our domain errors becomes a generic
  INTERNAL with an error id, which is also in the log (once, with its traceback): no exception
  class, SQL or traceback reaches the caller.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias

import grpc

from common.auth import ANONYMOUS, Caller, Role, Tokens
from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrchestratorError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.gateway.limits import CallerLimits

log = logging.getLogger(__name__)
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

OPEN_SERVICES = ("/grpc.health.v1.Health/",)
JOBS = "/orchestrator.v1.JobService/"
REQUIRED_ROLE = {
    f"{JOBS}StartVideoJob": Role.SUBMIT,
    f"{JOBS}StartStoryJob": Role.SUBMIT,
    f"{JOBS}RetryFailed": Role.SUBMIT,
    f"{JOBS}CancelJob": Role.SUBMIT,
}  # every other method: READ
STATUS_OF: list[tuple[type[OrchestratorError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
]

_caller: ContextVar[Caller] = ContextVar("caller", default=ANONYMOUS)


class Undecodable:
    """Stands for request bytes the method's deserializer refused."""


UNDECODABLE = Undecodable()


def current_caller() -> Caller:
    """The caller of the RPC being handled (set by the guard)."""
    return _caller.get()


def status_of(exc: OrchestratorError) -> grpc.StatusCode:
    return next(code for kind, code in STATUS_OF if isinstance(exc, kind))


def report_unexpected(exc: BaseException, where: str) -> str:
    """Log an unexpected error with a fresh id (the caller gets only the id)."""
    error_id = secrets.token_hex(6)
    log.error("unexpected error %s in %s", error_id, where, exc_info=exc, extra={"event": "fatal"})
    return error_id


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Guard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, tokens: Tokens, limits: CallerLimits) -> None:
        self.tokens = tokens
        self.limits = limits

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        role = REQUIRED_ROLE.get(method, Role.READ)
        deserialize = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None and not handler.request_streaming:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, role, method),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, role, method),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # server reflection
            return grpc.stream_stream_rpc_method_handler(
                self._bidi(handler.stream_stream, role, method),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _admit(self, context: Context, request: object, role: Role) -> tuple[Caller, str]:
        """The caller, checked and charged, or abort."""
        try:
            caller = self.tokens.identify(_metadata(context, "authorization"))
            caller.require(role, "this call")
            key = caller.name if not caller.anonymous else f"peer:{_peer_host(context)}"
            self.limits.take(key)
        except OrchestratorError as exc:
            await context.abort(status_of(exc), str(exc))
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "request: not a valid message for this method (it could not be decoded)",
            )
        return caller, key

    def _unary(self, behavior: Any, role: Role, method: str) -> Any:
        async def guarded(request: Any, context: Context) -> Any:
            caller, _ = await self._admit(context, request, role)
            token = _caller.set(caller)
            try:
                return await behavior(request, context)
            except Exception as exc:
                await _abort_unexpected(context, exc, method)
            finally:
                _caller.reset(token)

        return guarded

    def _streaming(self, behavior: Any, role: Role, method: str) -> Any:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            caller, key = await self._admit(context, request, role)
            try:
                self.limits.open_stream(key)
            except ResourceExhausted as exc:
                await context.abort(status_of(exc), str(exc))
            _caller.set(caller)
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:
                await _abort_unexpected(context, exc, method)
            finally:
                self.limits.close_stream(key)

        return guarded

    def _bidi(self, behavior: Any, role: Role, method: str) -> Any:
        async def guarded(requests: Any, context: Context) -> AsyncIterator[Any]:
            await self._admit(context, None, role)
            async for item in behavior(requests, context):
                yield item

        return guarded


async def _abort_unexpected(context: Context, exc: Exception, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, OrchestratorError):
        await context.abort(status_of(exc), str(exc))
    error_id = report_unexpected(exc, method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id})")


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return UNDECODABLE

    return tolerant


def _metadata(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


def _peer_host(context: Context) -> str:
    """`ipv4:1.2.3.4:5678` -> `1.2.3.4`, `ipv6:[::1]:5678` -> `::1`: the host as the HTTP
    side names it, so a client's gRPC and HTTP connections share its budget."""
    peer = context.peer() or "unknown"
    family, _, address = peer.partition(":")
    if family not in ("ipv4", "ipv6"):
        return peer  # unix:/path and the like
    return address.rsplit(":", 1)[0].strip("[]")
