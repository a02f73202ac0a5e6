"""API keys and scopes: who is calling, and may they do this.

Keys are configured as sha256 digests only; the presented key is hashed and compared in constant
time. Neither the key nor its digest is logged or stored; the principal's name is.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from lifelong.daemon.gateway.errors import ApiError
from lifelong.daemon.settings import ApiKey, Scope

ALL_SCOPES: frozenset[str] = frozenset({"infer", "feedback", "evals", "admin"})


@dataclass(frozen=True)
class Principal:
    name: str | None  # None when no keys are configured (the daemon is then bound to localhost)
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def may(self, scope: Scope) -> bool:
        """Whether this principal holds `scope` (admin holds every scope)."""
        return scope in self.scopes or self.admin


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [
            (bytes.fromhex(key.sha256.get_secret_value()), Principal(key.principal, frozenset(key.scopes)))
            for key in keys
        ]

    @property
    def open(self) -> bool:
        return not self._keys

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an `Authorization: Bearer KEY` header. Raises ApiError(401)."""
        if self.open:
            return Principal(None, ALL_SCOPES)
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401, "Missing API key: send `Authorization: Bearer <key>`.",
                type="authentication_error", code="missing_api_key",
            )
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for known, principal in self._keys:  # no early exit: timing does not tell which matched
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise ApiError(401, "Invalid API key.", type="authentication_error", code="invalid_api_key")
        return found


def require(scope: Scope):  # noqa: ANN201 - a FastAPI dependency factory
    def dependency(request: Request) -> Principal:
        keyring: KeyRing = request.app.state.keyring
        principal = keyring.authenticate(request.headers.get("authorization"))
        if not principal.may(scope):
            raise insufficient_scope(scope)
        return principal

    return dependency


def insufficient_scope(scope: Scope, doing: str | None = None) -> ApiError:
    """The 403 for a key without `scope` (for `doing`, when only part of a request needs it)."""
    message = f"This API key lacks the `{scope}` scope" + (f" needed {doing}." if doing else ".")
    return ApiError(403, message, type="permission_error", code="insufficient_scope")


InferPrincipal = Annotated[Principal, Depends(require("infer"))]
FeedbackPrincipal = Annotated[Principal, Depends(require("feedback"))]
AdminPrincipal = Annotated[Principal, Depends(require("admin"))]
