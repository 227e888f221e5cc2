"""The ``tagloop`` command: a thin entrypoint that wires each service's commands."""

from __future__ import annotations

import typer

from services.feedback.cli import app as feedback_app
from services.learner.cli import app as learner_app
from services.trainer.cli import app as trainer_app

app = typer.Typer(no_args_is_help=True, help="tagloop: streaming product tagging with a feedback loop.")
app.add_typer(trainer_app, name="trainer")
app.add_typer(feedback_app, name="feedback")
app.add_typer(learner_app, name="learner")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
