"""``tagloop tag "<text>"``: tag one text from the command line, every tag with its evidence.

The version tagged with is the registry's champion when Postgres answers, else the newest
exported version on disk (``tagloop train`` / ``tagloop train --quick`` export one), or the one
``--version`` names; it runs in this process (:class:`~shared.tagmodel.runtime.TagModelRuntime`,
the code Triton runs), no broker and no Triton needed. With no exported version at all the
text gets zero-shot taxonomy tags from the bundled MiniLM. Zero-shot label embeddings are
cached under the state directory, per encoder and locale.

Examples
--------
$ tagloop tag "Alisha Solid Women's Cycling Shorts"
$ tagloop tag "纯棉女士短袖T恤" --locale zh-CN --json
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from shared.events import Tag
from shared.settings import Settings


def champion_or_latest(settings: Settings) -> int | None:
    """The registry's champion of the tag model if the registry answers, else the newest version on disk."""
    from shared.model_registry import ModelRegistry
    from shared.model_repository import latest_version, versions

    name, repository = settings.triton.tag_model, settings.triton_model_repository
    try:
        registry = ModelRegistry(settings, connect_timeout_s=2.0)
        champion = registry.champion(name) if registry.is_migrated() else None
    except Exception:  # no Postgres here (or no registry): a command-line tool falls back to the files
        champion = None
    if champion is not None and champion.version in versions(repository, name):
        return champion.version
    return latest_version(repository, name)


def cached_embeddings(
    cache_dir: Path, key: str, texts: list[str], encode: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """``encode(texts)``, kept in ``cache_dir`` under a hash of ``key`` and the texts (write, then rename)."""
    digest = hashlib.sha256("\n".join([key, *texts]).encode()).hexdigest()[:16]
    path = cache_dir / f"tag-cli-labels-{digest}.npy"
    if path.exists():
        return np.load(path)
    embeddings = np.asarray(encode(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, embeddings)
    os.replace(tmp, path)
    return embeddings


def tag_with_version(
    text: str, version_dir: Path, settings: Settings, locale: str = "en", zero_shot: bool = True, top_k: int = 5
) -> list[Tag]:
    """Tags of ``text`` by one exported version (plus zero-shot taxonomy tags), with evidence."""
    from shared.tagmodel.decide import ZeroShotTags, tags_from_probs
    from shared.tagmodel.explain import explain_tags
    from shared.tagmodel.fingerprint import encoder_fingerprint
    from shared.tagmodel.localize import localize_tags
    from shared.tagmodel.runtime import TagModelRuntime
    from shared.tagmodel.zero_shot import candidate_categories, category_entries, label_text
    from shared.taxonomy import load_taxonomy

    runtime = TagModelRuntime(version_dir)
    out = runtime.infer([text])
    zs = None
    taxonomy_dir = settings.data_dir / "shopify-taxonomy"
    if zero_shot and taxonomy_dir.exists():
        cats = candidate_categories(load_taxonomy(taxonomy_dir))
        texts = [label_text(c, locale) for c in cats]
        key = f"{encoder_fingerprint(version_dir)}:{runtime.max_length}"
        emb = cached_embeddings(settings.state_dir / "cache", key, texts, runtime.embed)
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        zs = ZeroShotTags.from_card(runtime.card, category_entries(cats), unit)
    tags = tags_from_probs(out["PROBS"], runtime.card, embeddings=out["EMBEDDING"], zero_shot=zs)[0]
    tags = explain_tags(tags, text, out["EMBEDDING"][0], runtime.card, runtime.head, zs, top_k)
    return localize_tags(tags, locale)


def tag_zero_shot(text: str, settings: Settings, locale: str = "en") -> list[Tag]:
    """Tags of ``text`` with no trained version: zero-shot taxonomy tags from the bundled MiniLM."""
    from shared.encoder import MiniLMEncoder, minilm_weights_dir
    from shared.tagmodel.explain import explain_zero_shot
    from shared.tagmodel.zero_shot import ZeroShotTagger, candidate_categories, label_text
    from shared.taxonomy import load_taxonomy

    encoder = MiniLMEncoder(max_length=64)
    cats = candidate_categories(load_taxonomy(settings.data_dir / "shopify-taxonomy"))
    texts = [label_text(c, locale) for c in cats]
    emb = cached_embeddings(settings.state_dir / "cache", f"pretrained:{minilm_weights_dir().name}:64", texts,
                            encoder.encode)  # fmt: skip
    tagger = ZeroShotTagger.from_embeddings(cats, emb, locale=locale)
    listing = encoder.encode([text])
    labels = {c.id: tagger.label_embeddings[i] for i, c in enumerate(tagger.categories)}
    return explain_zero_shot(tagger.tag(listing)[0], listing[0], labels)


def _line(tag: Tag) -> str:
    ev = tag.evidence
    why = ""
    if ev is not None:
        terms = ", ".join(f"{t.term} {t.weight:+.3f}" for t in ev.terms)
        bits = [ev.origin.value]
        if ev.implied_by:
            bits.append(f"implied by {ev.implied_by}")
        if ev.similarity is not None:
            bits.append(f"cosine {ev.similarity:.2f}")
        if ev.embedding_share is not None:
            bits.append(f"embedding {ev.embedding_share:.0%}")
        if terms:
            bits.append(f"terms: {terms}")
        why = "  [" + "; ".join(bits) + "]"
    return f"{tag.score:.3f}  {tag.kind.value:<9}  {tag.tag_id}  {tag.name}{why}"


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("tag")
    def tag_cmd(
        text: Annotated[str, typer.Argument(help="The listing text (title, then description).")],
        version: Annotated[
            int | None, typer.Option(help="Exported version (default: the champion, else the newest).")
        ] = None,
        locale: Annotated[str, typer.Option(help="BCP 47 locale of the text: zh-* names tags in Chinese.")] = "en",
        zero_shot: Annotated[bool, typer.Option(help="Add zero-shot taxonomy tags to a trained version's.")] = True,
        top_k: Annotated[int, typer.Option(help="Evidence terms per tag.")] = 5,
        json_out: Annotated[
            bool, typer.Option("--json", help="The tags as JSON (TagEvent tags, with evidence).")
        ] = False,
    ) -> None:
        """Tag one text with the newest (or champion) exported version, each tag with its evidence."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from shared.model_repository import version_dir, versions

        settings = Settings()
        name, repository = settings.triton.tag_model, settings.triton_model_repository
        chosen = version if version is not None else champion_or_latest(settings)
        if chosen is not None and chosen not in versions(repository, name):
            typer.echo(f"{name} version {chosen} is not in {repository}", err=True)
            raise typer.Exit(1)
        if chosen is None:
            tags, source = tag_zero_shot(text, settings, locale), "zero-shot (no exported version)"
        else:
            tags = tag_with_version(text, version_dir(repository, name, chosen), settings, locale, zero_shot, top_k)
            source = f"{name} version {chosen}"
        if json_out:
            payload: dict[str, Any] = {"model": source, "tags": [t.model_dump(mode="json") for t in tags]}
            typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
            return
        typer.echo(f"# {source}")
        for t in tags:
            typer.echo(_line(t))
