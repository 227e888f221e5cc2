"""`tagloop tagger ...` commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach the tagger's commands."""
    tagger = typer.Typer(no_args_is_help=True, help="The tagger service (listings → Triton → listing-tags).")
    app.add_typer(tagger, name="tagger")

    @tagger.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def run(ctx: typer.Context) -> None:
        """Run one tagger process (options: --group-id --batch-size --max-wait-ms --max-inflight
        --transactional --http-port --listings-topic --model-version)."""
        from services.tagger.main import main as tagger_main
        from shared.preflight import require_kafka, require_triton
        from shared.settings import Settings

        # The tagger connects lazily and retries: without this a missing stack shows as retry logs.
        settings = Settings()
        require_kafka(settings.kafka)
        require_triton(settings.triton)
        tagger_main(list(ctx.args))
