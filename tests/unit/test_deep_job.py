"""The deep job's pure parts: which rows it fine-tunes on, how batches mix feedback and replay, its settings."""

from __future__ import annotations

import pytest

from services.trainer.deep_job import DeepOptions, mixed_batches, training_pools
from services.trainer.job_input import FastJobInput, JobRecord, TagLabel
from shared.settings import TrainerSettings


def test_each_batch_has_the_replay_share_of_catalog_rows() -> None:
    labelled, replay = list(range(10)), list(range(100, 130))
    batches = mixed_batches(labelled, replay, steps=20, batch_size=10, replay_share=0.2, seed=3)
    assert len(batches) == 20 and all(len(b) == 10 for b in batches)
    assert all(sum(i >= 100 for i in b) == 2 for b in batches)
    assert all(set(b) <= set(labelled) | set(replay) for b in batches)


def test_every_row_of_a_pool_is_seen_before_any_repeats() -> None:
    replay = list(range(100, 130))
    batches = mixed_batches(list(range(8)), replay, steps=15, batch_size=10, replay_share=0.2, seed=1)
    replayed = [i for b in batches for i in b if i >= 100]  # 2 a batch: 30 rows in the first 15 batches
    assert sorted(replayed) == replay
    labelled = [i for b in batches for i in b if i < 100]  # 8 a batch: the 8 rows, each once a batch
    assert all(sorted(labelled[k : k + 8]) == list(range(8)) for k in range(0, len(labelled), 8))


def test_batches_are_seeded() -> None:
    args = (list(range(50)), list(range(100, 200)))
    assert mixed_batches(*args, 5, 8, 0.25, seed=7) == mixed_batches(*args, 5, 8, 0.25, seed=7)
    assert mixed_batches(*args, 5, 8, 0.25, seed=7) != mixed_batches(*args, 5, 8, 0.25, seed=8)


def test_one_empty_pool_fills_the_batches_from_the_other() -> None:
    only_replay = mixed_batches([], [5, 6, 7], steps=2, batch_size=4, replay_share=0.2, seed=0)
    assert all(len(b) == 4 and set(b) <= {5, 6, 7} for b in only_replay)
    only_labelled = mixed_batches([1, 2], [], steps=2, batch_size=4, replay_share=0.5, seed=0)
    assert all(len(b) == 4 and set(b) <= {1, 2} for b in only_labelled)
    with pytest.raises(ValueError, match="no training rows"):
        mixed_batches([], [], steps=1, batch_size=4, replay_share=0.2, seed=0)


def test_pools_split_labelled_rows_from_distinct_catalog_rows_of_the_training_side() -> None:
    records = [
        JobRecord("a", "red shirt", frozenset({"t1"})),
        JobRecord("b", "red shirt", frozenset({"t1"})),  # a verbatim copy of a: replayed once
        JobRecord("c", "blue mug", frozenset({"t2"})),  # has a feedback label
        JobRecord("d", "green lamp"),  # feedback only (no tag set), labelled
        JobRecord("e", "old sofa"),  # feedback only, but its label weighs 0: nothing to learn
        JobRecord("f", "steel pan", frozenset({"t2"})),  # not on the training side
        JobRecord("c", "blue mug again", frozenset({"t1"})),  # duplicate listing id: the first record counts
    ]
    labels = [TagLabel("c", "t1", 1, 5.0), TagLabel("d", "t2", 0, 1.0), TagLabel("e", "t1", 1, 0.0),
              TagLabel("zz", "t1", 1, 1.0)]  # fmt: skip
    labelled, replay = training_pools(FastJobInput(records, labels), train=[0, 1, 2, 3, 4, 6])
    assert labelled == [2, 3]
    assert replay == [0]


def test_options_follow_the_trainer_settings() -> None:
    settings = TrainerSettings(deep_max_steps=7, deep_batch_size=4, deep_adapter="full", deep_lr=1e-5,
                               deep_lora_lr=1e-3, deep_lora_rank=4, replay_share=0.3)  # fmt: skip
    options = DeepOptions.from_settings(settings)
    assert (options.max_steps, options.batch_size, options.adapter) == (7, 4, "full")
    assert (options.lr, options.lora_lr, options.lora_rank, options.replay_share) == (1e-5, 1e-3, 4, 0.3)
    defaults = DeepOptions.from_settings(TrainerSettings())
    assert defaults.adapter == TrainerSettings().deep_adapter and defaults.max_steps == TrainerSettings().deep_max_steps
    with pytest.raises(ValueError):
        TrainerSettings(deep_adapter="qlora")  # type: ignore[arg-type]
