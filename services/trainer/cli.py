"""`tagloop` commands of the trainer service: train, export, eval tags, bench train / bench tag-runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

DEFAULT_RUN = Path("artifacts/tag_model")


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True)
    table.add_column("metric")
    table.add_column("value")
    for key, value in sorted(result.items()):
        if not isinstance(value, dict):
            table.add_row(key, str(value))
    Console().print(table)


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach this service's commands to the top-level `tagloop` app and its `eval`/`bench` groups."""

    @app.command("train")
    def train_cmd(
        data: Annotated[Path | None, typer.Option(help="Data dir (flipkart) or CSV/JSONL file.")] = None,
        format: Annotated[str, typer.Option("--format", help="flipkart | csv | jsonl")] = "flipkart",
        out: Annotated[Path, typer.Option(help="Run directory (checkpoint, calibration, metrics).")] = DEFAULT_RUN,
        epochs: int = 3,
        batch_size: int = 32,
        max_length: int = 64,
        limit: Annotated[int | None, typer.Option(help="Use only the first N listings.")] = None,
        seed: int = 0,
        resume: Annotated[bool, typer.Option(help="Continue from the run directory's checkpoint.")] = False,
        target_precision: float = 0.8,
        min_count: int = 5,
        max_depth: int = 3,
        export: Annotated[bool, typer.Option(help="Evaluate and export a Triton version at the end.")] = True,
        repository: Annotated[Path | None, typer.Option(help="Triton model repository.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
        quick: Annotated[
            bool,
            typer.Option(help="No fine-tuning: fit the head and thresholds over the pretrained MiniLM (minutes)."),
        ] = False,
        encoder_precision: Annotated[
            str, typer.Option(help="What the exported ONNX encoder serves: fp32 | int8 (faster on CPU; a "
                              "listing's tags then depend on its batch neighbours).")
        ] = "fp32",
    ) -> None:
        """Fine-tune MiniLM with a multi-label head, tune thresholds, evaluate, export."""
        from services.trainer.export import export as export_run
        from services.trainer.fast_job import quick_train
        from services.trainer.report import evaluate_run
        from services.trainer.train import TrainConfig, train
        from shared.catalog.readers import Format, locate_catalog
        from shared.settings import Settings

        settings = Settings()
        if format not in get_args(Format):
            raise typer.BadParameter(f"{format!r} is not one of {', '.join(get_args(Format))}", param_hint="--format")
        config = TrainConfig(
            data=locate_catalog(data or settings.data_dir, format),  # type: ignore[arg-type]
            format=format,  # type: ignore[arg-type]
            out=out,
            taxonomy=settings.data_dir / "shopify-taxonomy",
            epochs=epochs,
            batch_size=batch_size,
            max_length=max_length,
            limit=limit,
            seed=seed,
            target_precision=target_precision,
            min_count=min_count,
            max_depth=max_depth,
            encoder_precision=encoder_precision,  # type: ignore[arg-type]
        )
        if quick:  # embeddings cached by (encoder, text): a second run embeds only new listings
            repo = (repository or settings.triton_model_repository) if export else None
            cache = settings.state_dir / "embeddings"
            _print(quick_train(config, repo, settings.triton.tag_model, cache_dir=cache), json_out)
            return
        run_dir = train(config, resume=resume)
        result = evaluate_run(run_dir)
        if export:
            version_dir = export_run(run_dir, repository or settings.triton_model_repository, settings.triton.tag_model)
            result["exported"] = str(version_dir)
        _print(result, json_out)

    @app.command("export")
    def export_cmd(
        run: Annotated[Path, typer.Option("--checkpoint", "--run", help="Run directory of `tagloop train`.")] = (
            DEFAULT_RUN
        ),
        repository: Annotated[Path | None, typer.Option(help="Triton model repository.")] = None,
        format: Annotated[str, typer.Option("--format", help="onnx | torchscript")] = "onnx",
        encoder_precision: Annotated[
            str | None, typer.Option(help="fp32 | int8 (ONNX); default: the run's (fp32 unless trained with int8).")
        ] = None,
    ) -> None:
        """Export a trained run as the next numbered version of the Triton tag model."""
        from services.trainer.export import export as export_run
        from shared.settings import Settings

        settings = Settings()
        version_dir = export_run(
            run,
            repository or settings.triton_model_repository,
            settings.triton.tag_model,
            format,  # type: ignore[arg-type]
            precision=encoder_precision,  # type: ignore[arg-type]
        )
        typer.echo(str(version_dir))

    @eval_app.command("tags")
    def eval_tags_cmd(
        run: Annotated[Path, typer.Option("--checkpoint", "--run", help="Run directory of `tagloop train`.")] = (
            DEFAULT_RUN
        ),
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Tag model vs TF-IDF + linear SVM baseline on the run's leak-free test split."""
        from services.trainer.report import evaluate_run

        _print(evaluate_run(run), json_out)

