"""The tagger serves the trained tag model when Triton has a version of it, and says so on each event."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.simulator.listings import flipkart_records, listing_from_record, produce_listings
from shared.devstack.triton import TritonEndpoints
from shared.events import TagEvent, TagSource, decode
from shared.settings import Settings
from shared.tagmodel.card import load_model_card
from tests.integration.test_tag_model_triton import eval_json, run_dir, triton, version_dir  # noqa: F401
from tests.support import InProcessTagger, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tagger_uses_the_served_trained_model_and_stamps_its_version(
    settings: Settings, triton: TritonEndpoints, version_dir: Path, data_dir: Path  # noqa: F811
) -> None:
    card = load_model_card(version_dir)
    s = settings.model_copy(update={
        "triton_model_repository": version_dir.parents[1],
        "triton": settings.triton.model_copy(update={"http_url": triton.http_url, "grpc_url": triton.grpc_url}),
    })
    listings = [listing_from_record(r) for r in flipkart_records(data_dir, 30)]
    produce_listings(s, listings)
    with InProcessTagger(s, group_id="tagger-trained", batch_size=8):
        records = read_topic(s.kafka, s.topics.tags, expect=30, timeout_s=240)
    events = [decode(TagEvent, m.value()) for m in records]
    assert {e.listing_id for e in events} == {lst.listing_id for lst in listings}
    assert {(e.model_name, e.model_version) for e in events} == {(card.model_name, str(card.version))}
    vocab = {v.tag_id for v in card.vocabulary}
    model_tags = [t for e in events for t in e.tags if t.source == TagSource.MODEL]
    assert model_tags and all(t.tag_id in vocab for t in model_tags)
