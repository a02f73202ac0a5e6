"""The catalog's canary routing: a user (user key, else principal) is sent to one version for the
whole canary, about `share` of users go to the candidate, each canary draws its own users, only
the public alias is split, and alias requests are counted per version with their failures."""

from __future__ import annotations

from lifelong.daemon.catalog import CanaryRoute, ModelCatalog, Served

CANDIDATE = Served(path="/adapters/v0002", name="v0002-aaaaaaaaaaaa")
CHAMPION = Served(path="/adapters/v0001", name="v0001-bbbbbbbbbbbb")


def catalog(share: float, trial: int = 1) -> ModelCatalog:
    found = ModelCatalog(alias="lifelong", champion="v0001",
                         live={"v0001": CHAMPION, "v0002": CANDIDATE})
    found.canary = CanaryRoute(id=trial, version="v0002", share=share, served=CANDIDATE)
    return found


def test_a_user_stays_on_one_version_and_about_the_share_go_to_the_candidate():
    routes = catalog(0.2)
    users = [f"user-{i}" for i in range(2000)]
    first = {u: routes.resolve("lifelong", u).version for u in users}
    for _ in range(3):  # asked again and again: never flips
        assert {u: routes.resolve("lifelong", u).version for u in users} == first
    on_candidate = sum(v == "v0002" for v in first.values())
    assert 0.17 * len(users) < on_candidate < 0.23 * len(users)
    route = routes.resolve("lifelong", next(u for u, v in first.items() if v == "v0002"))
    assert (route.requested, route.upstream_model) == ("lifelong", CANDIDATE.name)


def test_each_canary_draws_its_own_users():
    users = [f"user-{i}" for i in range(1000)]
    one = {u for u in users if catalog(0.5, trial=1).resolve("lifelong", u).version == "v0002"}
    two = {u for u in users if catalog(0.5, trial=2).resolve("lifelong", u).version == "v0002"}
    assert one != two and 0.4 < len(one & two) / len(one) < 0.6


def test_pinned_names_and_callers_with_no_user_are_not_split():
    routes = catalog(0.99)
    assert routes.resolve("lifelong", None).version == "v0001"
    assert routes.resolve("v0001", "user-1").version == "v0001"
    assert routes.resolve("base", "user-1").version == "base"
    routes.canary = None
    assert {routes.resolve("lifelong", f"u{i}").version for i in range(50)} == {"v0001"}


def test_alias_requests_are_counted_per_version_with_their_failures():
    routes = catalog(0.5)
    users = [f"user-{i}" for i in range(40)]
    for user in users:
        routes.tally(routes.resolve("lifelong", user), failed=user.endswith("7"))
    routes.tally(routes.resolve("v0002", "user-1"), failed=True)  # pinned: not the canary's
    assert routes.canary is not None
    counted = routes.canary.tallies()
    assert sum(counted["requests"].values()) == 40  # type: ignore[attr-defined]
    assert sum(counted["errors"].values()) == 4  # type: ignore[attr-defined]
    assert set(counted["requests"]) == {"v0001", "v0002"}  # type: ignore[arg-type]
