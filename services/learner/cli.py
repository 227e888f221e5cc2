"""`tagloop` commands of the learner service.

* ``tagloop learner run [--serve]``: the online learner (with its API in-process if asked).
* ``tagloop learner serve``: the API over the latest Postgres checkpoint.
* ``tagloop learner openapi``: write ``schemas/learner-openapi.json``.
* ``tagloop eval affinity --json``: the Online Retail affinity evaluation.
* ``tagloop bench learner --json``: updates/s and lag at a fixed input rate.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli_output import print_result

OPENAPI_PATH = Path("schemas/learner-openapi.json")




def _serve_http(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")


def run_cmd(
    serve: Annotated[bool, typer.Option(help="Also serve the HTTP API from the live model.")] = False,
) -> None:
    """Run the online learner until SIGTERM/SIGINT."""
    import signal

    from services.learner.api import LockedView, create_app
    from services.learner.health import LearnerHealth
    from services.learner.main import ModelLock, run
    from shared.log_setup import configure_logging
    from shared.preflight import require_kafka, require_postgres
    from shared.settings import Settings

    settings = Settings()
    # The learner retries a missing broker forever: say once, plainly, what is not there.
    require_kafka(settings.kafka)
    require_postgres(settings.database_url)
    configure_logging(settings)
    ls = settings.learner
    stop = threading.Event()
    shared = ModelLock()
    health = LearnerHealth()
    if serve:
        view = LockedView(shared.lock, lambda: shared.model)
        app = create_app(view, ls.api_token.get_secret_value(), health=health)
        threading.Thread(target=_serve_http, args=(app, ls.http_host, ls.http_port), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, ls, stop, shared, health=health)


def serve_cmd() -> None:
    """Serve the API over the learner's latest checkpoint (reloaded when a newer one is saved)."""
    from services.learner.api import CheckpointView, create_app
    from services.learner.checkpoint import PostgresCheckpoints
    from shared.preflight import require_postgres
    from shared.settings import Settings

    settings = Settings()
    ls = settings.learner
    require_postgres(settings.database_url)
    repo = PostgresCheckpoints(settings.database_url, ls.name)
    repo.migrate()
    view = CheckpointView(repo)
    view.refresh()
    view.run_refresher(threading.Event(), ls.refresh_interval_s)
    _serve_http(create_app(view, ls.api_token.get_secret_value()), ls.http_host, ls.http_port)


def openapi_cmd(
    out: Annotated[Path, typer.Option(help="Where to write the OpenAPI JSON.")] = OPENAPI_PATH,
) -> None:
    """Write the OpenAPI document of the learner API."""
    from services.learner.api import openapi_schema

    out.write_text(json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n")
    typer.echo(str(out))


def eval_affinity_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    model: Annotated[str | None, typer.Option(help="lr, lr-river or fm (default: the configured one).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Default: the configured one.")] = None,
    adagrad: Annotated[bool | None, typer.Option(help="Default: the configured one.")] = None,
    granularity: Annotated[str, typer.Option(help="leaf (most specific tags) or all (with ancestors).")] = "leaf",
    impressions: Annotated[int, typer.Option(help="Sampled impressions per purchase line.")] = 2,
    train_fraction: Annotated[float, typer.Option(help="Share of the time span streamed as training.")] = 0.8,
    data_dir: Annotated[Path | None, typer.Option(help="Team data folder (default: Settings.data_dir).")] = None,
) -> None:
    """Recall@10 / NDCG@10 of the learner vs popularity and per-user frequency on Online Retail."""
    from services.learner.evaluate import evaluate_affinity, zero_shot_tag_fn
    from shared.settings import Settings

    settings = Settings()
    ls = Settings().learner
    root = (data_dir or settings.data_dir).resolve()
    tag_fn = zero_shot_tag_fn(root, cache_dir=settings.state_dir / "cache" / "learner")
    result = evaluate_affinity(
        root / "online-retail" / "online_retail.csv.gz",
        tag_fn,
        kind=(model or ls.model),  # type: ignore[arg-type]
        granularity=granularity,  # type: ignore[arg-type]
        impressions_per_purchase=impressions,
        train_fraction=train_fraction,
        model_params={
            "learning_rate": ls.learning_rate if learning_rate is None else learning_rate,
            "adagrad": ls.adagrad if adagrad is None else adagrad,
        },
    )
    print_result(result, as_json)


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach this service's commands to the top-level `tagloop` app and its `eval`/`bench` groups."""
    learner_app = typer.Typer(no_args_is_help=True, help="Online learner of user×tag affinity (river).")
    learner_app.command("run")(run_cmd)
    learner_app.command("serve")(serve_cmd)
    learner_app.command("openapi")(openapi_cmd)
    app.add_typer(learner_app, name="learner")
    eval_app.command("affinity")(eval_affinity_cmd)
