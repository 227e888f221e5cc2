"""The ``tagloop`` command: a thin entrypoint; each service registers its own commands."""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import typer

from services import db_cli
from services.feedback import cli as feedback_cli
from services.learner import cli as learner_cli
from services.replay import cli as replay_cli
from services.simulator import cli as simulator_cli
from services.tagger import cli as tagger_cli
from services.trainer import cli as trainer_cli
from services.trainer import model_cli as trainer_model_cli
from services.trainer import service_cli as trainer_service_cli
from services.trainer import tag_cli as trainer_tag_cli
from shared import cli_errors
from shared.settings import Settings

app = typer.Typer(no_args_is_help=True, help="tagloop: streaming product tagging with a feedback loop.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure quality (JSON with --json).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (code in bench/), ratios measured in one run.")
dev_app = typer.Typer(no_args_is_help=True, help="The local stack: broker, Postgres, Triton on loopback.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics.")
schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of the events.")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(dev_app, name="dev")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")

# db_cli first: it owns `tagloop db` (the feedback CLI registers it only when nobody has).
SERVICE_CLIS = (
    db_cli,
    trainer_cli,
    trainer_model_cli,
    trainer_service_cli,
    trainer_tag_cli,
    feedback_cli,
    learner_cli,
    tagger_cli,
    simulator_cli,
    replay_cli,
)
for service_cli in SERVICE_CLIS:
    service_cli.register(app, eval_app=eval_app, bench_app=bench_app)

# Packages that sit above the services (bench/: benchmarks, `eval loop`, `demo`) add their commands
# through this entry-point group, so the services never import them.
COMMAND_PLUGINS = "tagloop.commands"
for plugin in sorted(entry_points(group=COMMAND_PLUGINS), key=lambda ep: ep.name):
    plugin.load()(app, eval_app=eval_app, bench_app=bench_app)


@dev_app.command("up")
def dev_up(no_triton: bool = typer.Option(False, help="Skip Triton (broker and Postgres only)")) -> None:
    """Start the broker, Postgres (configured or embedded) and Triton; write their addresses."""
    from shared.devstack import stack
    from shared.devstack.process import StackError

    try:
        info = stack.up(Settings(), with_triton=not no_triton)
    except StackError as exc:
        typer.secho(f"dev up failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    overrides = info.settings_overrides()
    overrides["database_url"] = cli_errors.postgres_address(overrides["database_url"])  # no password on stdout
    typer.echo(json.dumps(overrides, indent=2))
    typer.echo(f"postgres: {info.postgres_mode}; triton models: {', '.join(info.triton_models) or '-'}")


@dev_app.command("down")
def dev_down() -> None:
    """Stop the processes `dev up` started (by pid); leave anything else alone."""
    from shared.devstack import stack

    for name, stopped in stack.down(Settings().state_dir).items():
        typer.echo(f"{name}: {'stopped' if stopped else 'not running'}")


@dev_app.command("status")
def dev_status() -> None:
    """What runs and where."""
    from shared.devstack import stack

    typer.echo(json.dumps(stack.status(Settings().state_dir), indent=2))


@topics_app.command("create")
def topics_create() -> None:
    """Create every tagloop topic with its partitions and cleanup policy (idempotent)."""
    from shared.kafka import create_all_topics

    for topic, state in create_all_topics(Settings()).items():
        typer.echo(f"{topic}: {state}")


@schemas_app.command("write")
def schemas_write(directory: Path = typer.Option(Path("schemas"))) -> None:
    """Regenerate the JSON Schema files from the event models."""
    from shared.schemas import write_schemas

    for path in write_schemas(directory):
        typer.echo(str(path))


class _ErrorOptions:
    """What the global options say about failures; read by :func:`main` after the command has failed."""

    debug = False


@app.callback()
def global_options(
    debug: bool = typer.Option(
        False, "--debug", envvar="TAGLOOP_DEBUG", help="On a failure, print the full traceback too."
    ),
) -> None:
    _ErrorOptions.debug = debug


def main() -> None:
    """Run ``tagloop``; a failure ends as plain lines and an exit code (shared/cli_errors.py, README)."""
    try:
        app()  # click itself answers bad usage (exit 2) and --help
    except Exception as exc:
        sys.exit(cli_errors.report(exc, sys.stderr, show_traceback=_ErrorOptions.debug))


if __name__ == "__main__":
    main()
