"""One error body for every error the gateway returns, in OpenAI's shape.

`{"error": {"message", "type", "param", "code"}}`: the official clients parse it into their typed
exceptions. Typed exceptions from the store and the upstream layer are translated here, once.
"""

from __future__ import annotations

import logging
import re
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

    @app.exception_handler(UnknownModel)
    async def _model(_: Request, exc: UnknownModel) -> Response:
        return error_response(
            404, str(exc), type="not_found_error", param="model", code="model_not_found"
        )

    @app.exception_handler(store_errors.StoreError)
    async def _store(_: Request, exc: store_errors.StoreError) -> Response:
        status, kind, code = _STORE_STATUS.get(
            type(exc), (422, "invalid_request_error", _snake(type(exc).__name__))
        )
        return error_response(
            status, str(exc), type=kind, param=getattr(exc, "field", None), code=code
        )

    async def _database_down(request: Request, exc: Exception) -> Response:
        # The driver's message names hosts, ports and users: it goes to the log, not the client.
        logger.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else
                       type(exc).__name__, extra={"path": request.url.path})
        return error_response(
            503, "the database is not answering; retry shortly", type="service_unavailable",
            code="database_unavailable", headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    for down in DATABASE_DOWN:
        app.add_exception_handler(down, _database_down)

    @app.exception_handler(InvalidVerifierOptions)
    async def _verifier_options(_: Request, exc: InvalidVerifierOptions) -> Response:
        return error_response(422, str(exc), type="invalid_request_error", param="options",
                              code=_snake(type(exc).__name__))

    @app.exception_handler(UpstreamUnavailable)
    async def _unavailable(request: Request, exc: UpstreamUnavailable) -> Response:
        # The message may name the internal vLLM URL: it goes to the log, not the client.
        logger.warning("model server unavailable: %s", exc, extra={"path": request.url.path})
        return error_response(
            503, "the model server is unavailable; retry shortly", type="service_unavailable",
            code="upstream_unavailable", headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(UpstreamTimeout)
    async def _timeout(request: Request, exc: UpstreamTimeout) -> Response:
        logger.warning("model server timed out: %s", exc, extra={"path": request.url.path})
        return error_response(504, "the model server did not answer in time", type="timeout_error",
                              code="upstream_timeout")

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> Response:
        return error_response(
            429, str(exc), type="rate_limit_error", param=None, code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(UpstreamRejected)
    async def _rejected(_: Request, exc: UpstreamRejected) -> Response:
        # vLLM already speaks the OpenAI error shape; pass it through untouched.
        return Response(exc.body, status_code=exc.status_code, media_type="application/json")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal error; see the daemon's log", type="server_error")
