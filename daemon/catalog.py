"""Which model names the gateway answers to, and which upstream model serves each.

The public alias means "the current champion" (the base model while none is promoted); a version
name pins that adapter; `base` pins the base model. Resolution happens once, when a request
arrives, so a request already in flight finishes on the version it started with.

During a canary the alias sends a share of its users to the candidate. A user is the caller's
user key (OpenAI's `user` field or the x-lifelong-user header), else the API key's principal;
the choice is a hash of the user and the canary's id, so one user stays on one version for the
whole canary (never flipping mid-conversation), and each canary draws its own users.

It sits beside promotion (which moves the champion) rather than in the gateway package: promotion
and the metrics read it, and the core does not import the HTTP layer.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from lifelong.daemon.upstream import BASE_MODEL_NAME


class UnknownModel(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model `{name}` does not exist.")
        self.name = name


@dataclass(frozen=True)
class Route:
    requested: str  # what the client asked for, echoed back in `model`
    upstream_model: str  # what vLLM calls it: `base` or the adapter's served name
    version: str  # what answered: `base` or the adapter version


@dataclass(frozen=True)
class Served:
    """An adapter version as vLLM serves it: its folder, and the name it is loaded under (the
    version and the start of its checksum: `adapters.served_name`)."""

    path: str
    name: str


@dataclass
class CanaryRoute:
    """The open canary as this gateway routes it, with what it answered for the alias since."""

    id: int  # the trial's id: it seeds the users' draw
    version: str
    share: float
    served: Served
    requests: Counter[str] = field(default_factory=Counter)  # version -> alias requests
    errors: Counter[str] = field(default_factory=Counter)  # of those, failed by a server

    def takes(self, user: str) -> bool:
        """Whether `user` is one of the share sent to the candidate (the same answer every time)."""
        digest = hashlib.sha256(f"{self.id}:{user}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < self.share * 2**64

    def tallies(self) -> dict[str, object]:
        return {"id": self.id, "version": self.version, "requests": dict(self.requests),
                "errors": dict(self.errors)}


@dataclass
class ModelCatalog:
    alias: str
    champion: str | None = None
    live: dict[str, Served] = field(default_factory=dict)  # adapter version -> how it is served
    canary: CanaryRoute | None = None

    def resolve(self, name: str, user: str | None = None) -> Route:
        """The route for model `name` asked by `user` (see the module docstring). Raises
        UnknownModel."""
        canary = self.canary
        if name == self.alias and canary is not None and user is not None and canary.takes(user):
            return Route(requested=name, upstream_model=canary.served.name,
                         version=canary.version)
        version = (self.champion or BASE_MODEL_NAME) if name == self.alias else name
        if version == BASE_MODEL_NAME:
            return Route(requested=name, upstream_model=BASE_MODEL_NAME, version=version)
        if version in self.live:
            return Route(requested=name, upstream_model=self.live[version].name,
                         version=version)
        raise UnknownModel(name)

    def tally(self, route: Route, *, failed: bool) -> None:
        """Count an alias request (and whether a server failed it) toward the open canary."""
        canary = self.canary
        if canary is not None and route.requested == self.alias:
            canary.requests[route.version] += 1
            if failed:
                canary.errors[route.version] += 1

    def served_champion(self) -> str | None:
        """The name vLLM serves the champion under (None while the base model is champion)."""
        return self.live[self.champion].name if self.champion is not None else None

    def names(self) -> list[str]:
        return [self.alias, BASE_MODEL_NAME, *sorted(self.live)]
