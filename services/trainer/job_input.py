"""What a head-refit job trains on: labelled texts plus weighted per-(listing, tag) labels (pure, no I/O).

Two kinds of input meet here, so that the fast job can be fed from either or both:

* :class:`JobRecord` -- a listing's text, and, for records of the original labelled catalog,
  its complete tag set (every other tag of the vocabulary is a negative). A listing known only
  from feedback has ``tag_ids=None``: nothing is known about it but its labels below.
* weighted labels -- anything with ``listing_id``, ``tag_id``, ``label`` (0/1) and ``weight``
  (:class:`WeightedLabel`; the label builder's ``services.trainer.feedback_labels.Label`` is
  one, so is :class:`TagLabel`). A label sets that cell's target and sample weight, overriding
  what the record's tag set says (feedback is newer than the catalog). Of two labels of one
  cell, the later in the sequence wins.

:func:`label_arrays` turns both into the matrices the head fit reads.

Examples
--------
>>> from shared.tagmodel.card import VocabEntry
>>> vocab = [VocabEntry(tag_id="a", name="A", kind="category"), VocabEntry(tag_id="b", name="B", kind="category")]
>>> job = FastJobInput([JobRecord("l1", "red shirt", frozenset({"a"})), JobRecord("l2", "mug")],
...                    [TagLabel("l1", "a", 0, 5.0), TagLabel("l2", "b", 1, 2.0)])
>>> arrays = label_arrays(job, vocab)
>>> arrays.y.tolist(), arrays.mask.tolist(), arrays.weight.tolist()
([[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]], [[5.0, 1.0], [0.0, 2.0]])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.trainer.labels import record_tag_ids
from shared.catalog.records import Record
from shared.events import TagKind
from shared.tagmodel.card import VocabEntry


@dataclass(frozen=True)
class JobRecord:
    """A listing's text and, when it is original labelled data, its complete set of tag ids."""

    listing_id: str
    text: str
    tag_ids: frozenset[str] | None = None  # None: only the weighted labels of this listing are known
    has_attributes: bool = True  # False: attribute tags are unknown (masked), not negatives


class WeightedLabel(Protocol):
    """One label of one (listing, tag): target 0/1 and how much it counts."""

    @property
    def listing_id(self) -> str: ...

    @property
    def tag_id(self) -> str: ...

    @property
    def label(self) -> int: ...

    @property
    def weight(self) -> float: ...


@dataclass(frozen=True)
class TagLabel:
    """The simplest :class:`WeightedLabel`."""

    listing_id: str
    tag_id: str
    label: int
    weight: float = 1.0


@dataclass(frozen=True)
class FastJobInput:
    """A training set: records (texts) and weighted labels over them.

    ``fingerprint`` identifies the set (e.g. the label builder's); None: :func:`dataset_fingerprint`.
    """

    records: Sequence[JobRecord]
    labels: Sequence[WeightedLabel] = ()
    fingerprint: str | None = None


def records_from_catalog(records: Sequence[Record], max_depth: int = 3) -> list[JobRecord]:
    """Original labelled catalog records as :class:`JobRecord` with their complete tag sets."""
    return [
        JobRecord(r.id, r.text, frozenset(record_tag_ids(r.labels, max_depth)), r.has_attributes) for r in records
    ]


def dataset_fingerprint(job: FastJobInput) -> str:
    """``job.fingerprint``, else sha256 of the records and labels in a canonical (sorted) form."""
    if job.fingerprint:
        return job.fingerprint
    lines = sorted(
        json.dumps(["r", r.listing_id, r.text, sorted(r.tag_ids) if r.tag_ids is not None else None, r.has_attributes])
        for r in job.records
    )
    lines += sorted(json.dumps(["l", x.listing_id, x.tag_id, int(x.label), repr(float(x.weight))]) for x in job.labels)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class LabelArrays:
    """``[n_records, n_tags]`` float32 targets, mask (1 = known) and sample weights, plus what was dropped."""

    y: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    labels_applied: int
    labels_unknown_listing: int  # no record carries the listing's text
    labels_unknown_tag: int  # the tag is not in the vocabulary (new tags need a full training run)


def label_arrays(job: FastJobInput, vocab: Sequence[VocabEntry]) -> LabelArrays:
    """Targets, mask and weights of ``job`` over ``vocab`` (column order = vocabulary order).

    A record with a tag set gives 1 for its tags and 0 for every other tag, weight 1, with
    attribute tags masked when its attributes are unknown; a record without one is all masked.
    Each weighted label then sets its cell (target, weight, known); a label of weight 0 or less
    removes the cell from training. Of duplicate listing ids, the first record counts.
    """
    index = {v.tag_id: j for j, v in enumerate(vocab)}
    is_attr = np.array([v.kind == TagKind.ATTRIBUTE for v in vocab], dtype=bool)
    n, k = len(job.records), len(vocab)
    y = np.zeros((n, k), dtype=np.float32)
    mask = np.zeros((n, k), dtype=np.float32)
    row_of: dict[str, int] = {}
    for r, rec in enumerate(job.records):
        row_of.setdefault(rec.listing_id, r)
        if rec.tag_ids is None:
            continue
        mask[r] = 1.0
        if not rec.has_attributes:
            mask[r, is_attr] = 0.0
        for tid in rec.tag_ids:
            if tid in index:
                y[r, index[tid]] = 1.0
    weight = mask.copy()
    applied = unknown_listing = unknown_tag = 0
    for label in job.labels:
        r_or_none, j_or_none = row_of.get(label.listing_id), index.get(label.tag_id)
        if r_or_none is None:
            unknown_listing += 1
            continue
        if j_or_none is None:
            unknown_tag += 1
            continue
        r, j = r_or_none, j_or_none
        y[r, j] = 1.0 if label.label else 0.0
        weight[r, j] = max(float(label.weight), 0.0)
        mask[r, j] = 1.0 if label.weight > 0 else 0.0
        applied += 1
    return LabelArrays(y, mask, weight, applied, unknown_listing, unknown_tag)
