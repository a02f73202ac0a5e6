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
    upstream_model: str  # what vLLM calls it: `base` or the adapter's served name
    version: str  # what answered: `base` or the adapter version


@dataclass(frozen=True)
class Served:
    """An adapter version as vLLM serves it: its folder, and the name it is loaded under (the
    version and the start of its checksum: `adapters.served_name`)."""

    path: str
    name: str


@dataclass
class ModelCatalog:
    alias: str
    champion: str | None = None
    live: dict[str, Served] = field(default_factory=dict)  # adapter version -> how it is served

    def resolve(self, name: str) -> Route:
        """The route for model `name`. Raises UnknownModel."""
        version = (self.champion or BASE_MODEL_NAME) if name == self.alias else name
        if version == BASE_MODEL_NAME:
            return Route(requested=name, upstream_model=BASE_MODEL_NAME, version=version)
        if version in self.live:
            return Route(requested=name, upstream_model=self.live[version].name,
                         version=version)
        raise UnknownModel(name)

    def served_champion(self) -> str | None:
        """The name vLLM serves the champion under (None while the base model is champion)."""
        return self.live[self.champion].name if self.champion is not None else None

    def names(self) -> list[str]:
        return [self.alias, BASE_MODEL_NAME, *sorted(self.live)]
