"""`lifelong eval`: judge an adapter through the running vLLM, in this process."""

from __future__ import annotations

from typing import Annotated

import typer

from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from, vllm_url


def eval_(
    version: Annotated[str, typer.Argument(help="The adapter to judge, e.g. v0003.")],
    against: Annotated[str | None, typer.Option(
        help="An adapter version or `base` to compare with; default: the champion.",
    )] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Judge an adapter against the champion through the running vLLM, and print the table.

    Against the current champion, the gate's decision sets the adapter's status (approved or
    rejected); it never promotes.
    """
    import asyncio

    from sqlalchemy.orm import sessionmaker

    from lifelong.adapters import AdapterError
    from lifelong.daemon.judge import NothingToJudge, build_judge, describe
    from lifelong.daemon.upstream import AdapterLoadFailed, HttpUpstream, UpstreamUnavailable
    from lifelong.evals.runner import EvalRequestFailed
    from lifelong.evals.suites import SuiteError
    from lifelong.evals.verifier_pool import VerifierPool
    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated, UnknownAdapter

    settings = settings_from(config, data_dir=data_dir)
    url = vllm_url(settings)

    async def judged():  # noqa: ANN202 - a Judgement
        upstream = HttpUpstream(url, timeout_s=settings.vllm.request_timeout_s)
        engine = make_engine(settings.database_url,
                             sqlite_synchronous=settings.database.sqlite_synchronous)
        try:
            if not await upstream.health():
                fail(f"no vLLM answers at {url}; start `lifelong serve` first (evals answer "
                     "through its vLLM server)")
            ensure_migrated(engine)
            with VerifierPool(settings.evals.verifiers.workers) as verifiers:
                judge = build_judge(settings, upstream=upstream, verifiers=verifiers,
                                    sessions=sessionmaker(engine, expire_on_commit=False))
                return await judge.judge(version, against=against)
        finally:
            await upstream.aclose()
            engine.dispose()

    try:
        judgement = asyncio.run(judged())
    except UnknownAdapter as exc:
        fail(f"{exc}; `lifelong adapters list` shows the registered ones")
    except (NothingToJudge, AdapterError, DatabaseNotMigrated, AdapterLoadFailed) as exc:
        fail(str(exc))
    except SuiteError as exc:
        fail("eval suites are invalid:\n  " + "\n  ".join(exc.problems))
    except (UpstreamUnavailable, EvalRequestFailed) as exc:
        fail(f"vLLM at {url} failed during the eval: {exc}")
    typer.echo(describe(judgement))
