"""The registry's rules: which status moves are allowed (pure; the Postgres side is in tests/integration)."""

from __future__ import annotations

import pytest

from shared.model_status import ALLOWED_TRANSITIONS, InvalidTransition, ModelStatus, check_transition

S = ModelStatus


def test_every_status_has_a_rule_and_the_values_are_the_documented_ones() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(ModelStatus)
    assert {s.value for s in ModelStatus} == {
        "candidate", "shadow", "canary", "champion", "retired", "rejected", "rolled-back",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.CANDIDATE, S.SHADOW), (S.SHADOW, S.CANARY), (S.CANARY, S.CHAMPION), (S.CANARY, S.ROLLED_BACK),
     (S.CHAMPION, S.RETIRED), (S.RETIRED, S.CHAMPION), (S.CANDIDATE, S.REJECTED), (S.CHAMPION, S.ROLLED_BACK)],
)  # fmt: skip
def test_the_rollout_path_and_rollback_are_allowed(old: ModelStatus, new: ModelStatus) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.REJECTED, S.CHAMPION), (S.ROLLED_BACK, S.CANARY), (S.CHAMPION, S.CANDIDATE), (S.RETIRED, S.CANARY),
     (S.CANDIDATE, S.ROLLED_BACK), (S.CANARY, S.SHADOW)],
)  # fmt: skip
def test_moves_back_into_the_pipeline_or_out_of_a_final_state_are_refused(old: ModelStatus, new: ModelStatus) -> None:
    with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
        check_transition(old, new)


def test_final_states_allow_nothing() -> None:
    assert not ALLOWED_TRANSITIONS[S.REJECTED] and not ALLOWED_TRANSITIONS[S.ROLLED_BACK]
