"""The ``tagloop`` command: a thin entrypoint; each service registers its own commands."""

from __future__ import annotations

import typer

from services.feedback import cli as feedback_cli
from services.learner import cli as learner_cli
from services.trainer import cli as trainer_cli

app = typer.Typer(no_args_is_help=True, help="tagloop: streaming product tagging with a feedback loop.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure quality (JSON with --json).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (code in bench/), ratios measured in one run.")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")

for service_cli in (trainer_cli, feedback_cli, learner_cli):
    service_cli.register(app, eval_app=eval_app, bench_app=bench_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
