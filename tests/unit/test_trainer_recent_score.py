"""The recent-feedback score undoes the champion's choice of what got judged (inverse propensity)."""

from __future__ import annotations

from services.trainer.feedback_labels import Label, LabelKind
from services.trainer.scoring import weighted_f1

SHARE = 0.25  # each tag the champion left out is explored with this probability


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn)


def judged_world() -> tuple[list[Label], set[str], set[str]]:
    """40 listings with the tag, 10 without. The champion shows it on 20 right and 10 wrong ones
    and misses 20, of which 1 in 4 were explored and judged. The candidate says it on every
    listing that has it and on 5 that do not."""
    shown_right = [f"r{i}" for i in range(20)]
    shown_wrong = [f"w{i}" for i in range(10)]
    missed = [f"m{i}" for i in range(20)]
    explored = missed[: int(len(missed) * SHARE)]
    labels = [Label(lid, "t", 1, 1.0, LabelKind.WEAK) for lid in shown_right]
    labels += [Label(lid, "t", 0, 1.0, LabelKind.STRONG) for lid in shown_wrong]
    labels += [Label(lid, "t", 1, 1.0, LabelKind.WEAK, exploratory=True) for lid in explored]
    champion = set(shown_right) | set(shown_wrong)
    candidate = set(shown_right) | set(missed) | set(shown_wrong[:5])
    return labels, champion, candidate


def test_weighted_score_is_the_score_on_every_listing() -> None:
    labels, champion, candidate = judged_world()
    assert weighted_f1(lambda x: x.listing_id in champion, labels, SHARE) == f1(tp=20, fp=10, fn=20)
    assert weighted_f1(lambda x: x.listing_id in candidate, labels, SHARE) == f1(tp=40, fp=5, fn=0)


def test_unweighted_score_flatters_the_champion_that_chose_the_judged_cells() -> None:
    labels, champion, _ = judged_world()
    unweighted = weighted_f1(lambda x: x.listing_id in champion, labels)
    assert unweighted is not None and unweighted > f1(tp=20, fp=10, fn=20) + 0.1


def test_nothing_to_score() -> None:
    assert weighted_f1(lambda x: True, [], SHARE) is None


def test_per_label_propensities_override_the_share() -> None:
    # The cap of one guess per listing: with 3 candidates each was explored 1 time in ~8.4, not in 4.
    labels, champion, _ = judged_world()
    weights = {x.key: 8.4 for x in labels if x.exploratory}
    got = weighted_f1(lambda x: x.listing_id in champion, labels, SHARE, weights)
    assert got == f1(tp=20, fp=10, fn=int(5 * 8.4))
