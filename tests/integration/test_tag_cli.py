"""``tagloop tag``: after a ``tagloop train --quick`` run, one text is tagged from the command line with evidence.

Real commands end to end (no Triton, no broker): ``tagloop train --quick`` over a small Chinese
catalog (the zh-CN names of two taxonomy roots labelled with their zh-CN paths) exports version 1
into a fresh repository; ``tagloop tag`` then loads it as a fresh clone would (newest version on
disk: the registry's Postgres is unreachable here on purpose) and explains every tag.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.chinese import taxonomy_name_records
from services.cli import app
from shared.tagmodel.analyzer import analyze
from shared.taxonomy import load_taxonomy

pytestmark = pytest.mark.slow  # a quick training run with MiniLM embeddings and an ONNX export: ~1-2 min

TEXT = "猫砂盆 全封闭 防臭"  # a fully enclosed, odour-proof cat litter box


@pytest.fixture(scope="module")
def env(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tag-cli")
    return {
        "TAGLOOP_STATE_DIR": str(root / "state"),
        "TAGLOOP_TRITON_MODEL_REPOSITORY": str(root / "repo"),
        "TAGLOOP_DATA_DIR": str(data_dir),
        "TAGLOOP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",  # nothing listens: no registry
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def trained(env: dict[str, str], data_dir: Path) -> dict[str, str]:
    records = taxonomy_name_records(load_taxonomy(data_dir / "shopify-taxonomy"), "zh-CN", {"ap", "fb"})
    catalog = Path(env["TAGLOOP_STATE_DIR"]).parent / "zh.jsonl"
    catalog.write_text("".join(json.dumps({"id": r.id, "text": r.text, "labels": list(r.labels)}, ensure_ascii=False)
                               + "\n" for r in records), encoding="utf-8")  # fmt: skip
    result = CliRunner().invoke(app, ["train", "--quick", "--data", str(catalog), "--format", "jsonl",
                                      "--max-depth", "2", "--max-length", "32", "--json"], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    return env


def test_tag_explains_each_tag_of_a_chinese_text_with_the_trained_version(trained: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["tag", TEXT, "--locale", "zh-CN", "--no-zero-shot", "--json"], env=trained)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model"] == "tag_model version 1"
    tags = out["tags"]
    ids = [t["tag_id"] for t in tags]
    # Chinese-named tags with Chinese ids: pets > pet supplies, as the catalog's names say.
    assert "cat:动物-宠物用品" in ids and "cat:动物-宠物用品/宠物用品" in ids
    assert all(t["evidence"] is not None for t in tags)
    leaf = next(t for t in tags if t["tag_id"] == "cat:动物-宠物用品/宠物用品")
    assert leaf["name"] == "宠物用品" and leaf["evidence"]["origin"] == "model"
    terms = [x["term"] for x in leaf["evidence"]["terms"]]
    assert terms and set(terms) <= set(analyze(TEXT)) and "猫" in terms
    assert 0.0 <= leaf["evidence"]["embedding_share"] <= 1.0


def test_tag_prints_one_readable_line_per_tag(trained: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["tag", TEXT, "--no-zero-shot"], env=trained)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "# tag_model version 1"
    assert any("cat:动物-宠物用品/宠物用品" in line and "terms:" in line and "猫" in line for line in lines[1:])


def test_an_unknown_version_is_one_line_and_exit_1(trained: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["tag", TEXT, "--version", "99"], env=trained)
    assert result.exit_code == 1 and "version 99 is not in" in result.output
