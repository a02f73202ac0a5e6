"""Which model names the gateway answers to, and which upstream model serves each.

The public alias means "the current champion" (the base model while none is promoted); a version
name pins that adapter; `base` pins the base model. Resolution happens once, when a request
arrives, so a request already in flight finishes on the version it started with.

It sits beside promotion (which moves the champion) rather than in the gateway package: promotion
and the metrics read it, and the core does not import the HTTP layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.daemon.upstream import BASE_MODEL_NAME


class UnknownModel(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model `{name}` does not exist.")
        self.name = name


@dataclass(frozen=True)
class Route:
    requested: str  # what the client asked for, echoed back in `model`
    upstream_model: str  # what vLLM calls it: `base` or the adapter version
    version: str  # what answered: `base` or the adapter version


@dataclass
class ModelCatalog:
    alias: str
    champion: str | None = None
    live: dict[str, str] = field(default_factory=dict)  # adapter version -> folder

    def resolve(self, name: str) -> Route:
        """The route for model `name`. Raises UnknownModel."""
        if name == self.alias:
            version = self.champion or BASE_MODEL_NAME
            return Route(requested=name, upstream_model=version, version=version)
        if name == BASE_MODEL_NAME or name in self.live:
            return Route(requested=name, upstream_model=name, version=name)
        raise UnknownModel(name)

    def names(self) -> list[str]:
        return [self.alias, BASE_MODEL_NAME, *sorted(self.live)]
