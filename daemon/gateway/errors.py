"""One error body for every error the gateway returns, in OpenAI's shape.

`{"error": {"message", "type", "param", "code"}}`: the official clients parse it into their typed
exceptions. Typed exceptions from the store and the upstream layer are translated here, once
(`answer_for`); the serving metrics label a failed request by the same status (`status_of`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifelong.daemon.catalog import UnknownModel
from lifelong.daemon.gateway.rate_limit import RateLimited
from lifelong.daemon.upstream import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from lifelong.evals.verifiers import InvalidVerifierOptions
from lifelong.feedback_store import errors as store_errors
from lifelong.feedback_store.leases import NotLeader

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers


def error_response(
    status_code: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


# Store errors -> (status, type, code); anything else from the store is a 422.
_STORE_STATUS: dict[type[Exception], tuple[int, str, str]] = {
    store_errors.UnknownInteraction: (404, "not_found_error", "unknown_interaction"),
    store_errors.ForeignInteraction: (403, "permission_error", "foreign_interaction"),
    store_errors.UnknownAdapter: (404, "not_found_error", "unknown_adapter"),
    store_errors.IdempotencyKeyReused: (409, "invalid_request_error", "idempotency_key_reused"),
}
# What the database raises when it cannot be reached or does not answer in time (refused,
# timed out, connection lost, pool exhausted, SQLite locked past its busy timeout).
DATABASE_DOWN = (store_errors.DatabaseUnavailable, OperationalError, InterfaceError, PoolTimeout)
DATABASE_RETRY_AFTER_S = 5


# The OpenAI routes answer a bad request with 400, as OpenAI and vLLM do (the official clients
# raise BadRequestError); the gateway's own routes keep FastAPI's 422.
OPENAI_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True, slots=True)
class Answer:
    """How the gateway answers one typed error: the error body's fields, headers, and a line for
    the log when the detail (hosts, ports, URLs) must not reach the client."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None
    log: str | None = None


# Every class `answer_for` translates (a handler is registered for each).
TYPED = (UnknownModel, store_errors.StoreError, *DATABASE_DOWN, InvalidVerifierOptions,
         UpstreamUnavailable, UpstreamTimeout, RateLimited, NotLeader)


def answer_for(exc: Exception) -> Answer | None:
    """The answer to a typed error from below the HTTP layer (catalog, store, database,
    verifiers, upstream, rate limit); None for anything else."""
    match exc:
        case UnknownModel():
            return Answer(404, str(exc), "not_found_error", param="model", code="model_not_found")
        case _ if isinstance(exc, DATABASE_DOWN):  # before StoreError: DatabaseUnavailable is one
            return Answer(
                503, "the database is not answering; retry shortly", "service_unavailable",
                code="database_unavailable", headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
                log="database unavailable: "
                    + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__),
            )
        case store_errors.StoreError():
            status, kind, code = _STORE_STATUS.get(
                type(exc), (422, "invalid_request_error", _snake(type(exc).__name__))
            )
            return Answer(status, str(exc), kind, param=getattr(exc, "field", None), code=code)
        case InvalidVerifierOptions():
            return Answer(422, str(exc), "invalid_request_error", param="options",
                          code=_snake(type(exc).__name__))
        case UpstreamUnavailable():
            return Answer(
                503, "the model server is unavailable; retry shortly", "service_unavailable",
                code="upstream_unavailable", headers={"Retry-After": str(exc.retry_after_s)},
                log=f"model server unavailable: {exc}",
            )
        case UpstreamTimeout():
            return Answer(504, "the model server did not answer in time", "timeout_error",
                          code="upstream_timeout", log=f"model server timed out: {exc}")
        case RateLimited():
            return Answer(429, str(exc), "rate_limit_error", code="rate_limit_exceeded",
                          headers={"Retry-After": str(exc.retry_after_s)})
        case NotLeader():
            where = (f"; the leader is {exc.holder}" + (f" at {exc.holder_url}"
                                                         if exc.holder_url else "")
                     if exc.holder else "; no replica leads now, retry shortly")
            return Answer(409, f"{exc}{where}", "invalid_request_error", code="not_leader")
    return None


def status_of(exc: Exception) -> int:
    """The HTTP status the gateway answers `exc` with (500 for what it does not expect)."""
    if isinstance(exc, UpstreamRejected):
        return exc.status_code  # vLLM's own answer, passed through
    if isinstance(exc, ApiError):
        return exc.status_code
    answer = answer_for(exc)
    return answer.status if answer else 500


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the one error body."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status_code, exc.message, type=exc.type, param=exc.param, code=exc.code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = _field_of(tuple(first.get("loc", ())))
        message = "; ".join(
            f"{_field_of(tuple(error.get('loc', ())))}: {error['msg']}" for error in exc.errors()
        )
        status = 400 if request.url.path in OPENAI_ROUTES else 422
        return error_response(status, message, type="invalid_request_error", param=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(
            exc.status_code, str(exc.detail), type=kind, headers=getattr(exc, "headers", None)
        )

    async def _typed(request: Request, exc: Exception) -> Response:
        answer = answer_for(exc)
        assert answer is not None, f"{type(exc).__name__} is in TYPED but not translated"
        if answer.log:
            logger.warning(answer.log, extra={"path": request.url.path})
        return error_response(answer.status, answer.message, type=answer.type,
                              param=answer.param, code=answer.code, headers=answer.headers)

    for typed in TYPED:
        app.add_exception_handler(typed, _typed)

    @app.exception_handler(UpstreamRejected)
    async def _rejected(_: Request, exc: UpstreamRejected) -> Response:
        # vLLM already speaks the OpenAI error shape; pass it through untouched.
        return Response(exc.body, status_code=exc.status_code, media_type="application/json")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal error; see the daemon's log", type="server_error")
