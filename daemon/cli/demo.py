"""`lifelong demo`: the command around daemon/demo.py (which holds the story, the users and the
report); needs the `demo` extra (openai for the users, matplotlib for the PNG)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lifelong.daemon.cli.base import ensure_base_model
from lifelong.daemon.cli.options import (
    ConfigOption,
    DataDirOption,
    fail,
    quiet_openmp,
    settings_from,
)

if TYPE_CHECKING:
    from lifelong.daemon.demo import Demo

EXTRA = ("openai", "matplotlib")  # what `pip install 'lifelong[demo]'` adds to the core install


def demo(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    minutes: Annotated[float, typer.Option(
        min=1, help="Stop after this long (after the cycle in progress is reported).")] = 20.0,
    cycles: Annotated[int, typer.Option(min=1, help="Stop after this many judged cycles.")] = 3,
    promotions: Annotated[int, typer.Option(
        min=1, help="Stop a minute after this many promotions.")] = 1,
    users: Annotated[int, typer.Option(min=1, help="Simulated users asking at once.")] = 4,
    seed: Annotated[int, typer.Option(help="Seeds the users.")] = 0,
) -> None:
    """Watch the base model learn: simulated users ask sums it answers in the wrong form, report
    outcomes and correct it; the daemon trains, judges and hot-swaps on its own. Prints each
    version's held-out accuracy on the sums and its general-suite score, the gate's decisions,
    and writes a PNG learning curve."""
    # Before anything slow: twenty minutes in is no time to learn the PNG cannot be drawn.
    if missing := [name for name in EXTRA if importlib.util.find_spec(name) is None]:
        fail(f"the demo needs {' and '.join(missing)}, which the core install leaves out: "
             "pip install 'lifelong[demo]' (make demo and scripts/setup.sh install it)")
    quiet_openmp()
    from lifelong.daemon import demo as demo_run
    from lifelong.feedback_store.database import make_engine, upgrade

    settings = settings_from(config, data_dir=data_dir)
    if settings.base_model.embedded_tiny:
        fail("the demo teaches a chat model, and base_model.default is tiny: set "
             "base_model.default: smollm2 (the default), or base_model.path to your own model")
    ensure_base_model(settings)
    plan = demo_run.Plan(minutes=minutes, cycles=cycles, promotions=promotions, users=users,
                         seed=seed)
    where = demo_run.fresh_dir(settings.data_dir / "demo")
    settings, config_file = demo_run.demo_settings(settings, where)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    upgrade(engine)
    engine.dispose()
    typer.echo(f"demo: starting the daemon on {settings.gateway.host}:{settings.gateway.port} "
               f"with {settings.base_model_path} (data and logs in {where}; vLLM takes about "
               "half a minute)")
    show = demo_run.Demo(url="", plan=plan, out_dir=where, say=typer.echo)
    try:
        with demo_run.running_daemon(config_file, settings) as daemon:
            show.url = daemon.url
            n = show.register_test_set()
            typer.echo(
                f"demo: registered {n} held-out `{demo_run.SKILL}` tasks (the judge's test "
                f"set); {plan.users} users now ask, {plan.sums_share:.0%} of the time a sum "
                f"('{demo_run.sum_question(27, 82)[0]}'), check the answer, report the outcome "
                f"and correct {plan.correction_share:.0%} of the wrong ones; the rest ask "
                f"everyday questions and keep the answers. A cycle starts every "
                f"{settings.schedule.min_new_feedback} feedback items. Ctrl-C ends the demo.")
            show.run()
            typer.echo("demo: stopping the daemon")
    except KeyboardInterrupt:
        typer.echo("\ndemo: interrupted; the daemon has stopped")
    except RuntimeError as exc:
        fail(str(exc))
    _summary(show, where)


def _summary(show: Demo, where: Path) -> None:
    """The table of judged versions, what the users saw after each promotion, the PNG."""
    from lifelong.daemon import demo as demo_run

    typer.echo("\n" + demo_run.table(show.rows))
    observed = show.users.seen() if show.users else []
    if show.users is not None:
        typer.echo(f"\nusers asked {len(observed)} questions; failed requests: "
                   f"{show.users.failed_requests}")
        for version, at in show.promoted_at.items():
            after = [o for o in observed if o.skill == demo_run.SKILL and o.version == version]
            right = sum(bool(o.passed) for o in after) / len(after) if after else None
            typer.echo(f"{version} promoted at {demo_run.clock(at)} after the users started; "
                       f"users' {demo_run.SKILL} answered right since: "
                       + ("-" if right is None else f"{right:.0%} of {len(after)}"))
    if observed or show.rows:
        png = demo_run.plot(show.rows, observed, where / "learning_curve.png")
        typer.echo(f"learning curve: {png}")
