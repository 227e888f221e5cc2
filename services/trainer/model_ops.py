"""Ops on tag model versions: the registry's status and what the running Triton serves, kept in step.

``tagloop model promote | rollback | shadow | canary`` (:mod:`services.trainer.model_cli`) and
the trainer service change which version tags what. Two systems must agree: the registry
(taggers route by it, :mod:`services.tagger.rollout_watch`) and Triton (which must serve every
version a tagger may send to). Measured on the bundled tritonserver 2.51
(``tests/integration/test_fast_job.py``): loading the model with a configuration that lists
versions ``[1, 2]`` while requests for version 1 are in flight fails none of them (Triton
builds the new instances beside the old ones and swaps when they are ready), but a
configuration that leaves out a version fails that version's requests at once. Hence the
rules every operation here follows:

1. Triton first: before the registry points taggers at a version, Triton serves it (loaded
   with a ``specific`` version policy, :func:`serve_versions`, and ready).
2. Never drop what may get traffic: the configuration lists every version that is live
   before *or* after the change, plus versions that left a live status less than
   ``drain_s`` ago (taggers re-read the registry every ``rollout_refresh_s``).
3. Live = champion, shadow, canary and the rollback target (the previous champion stays
   loaded, so a rollback is instant).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.model_registry import ModelRegistry, ModelStatus, ModelVersion, RegistryError, StatusChange
from shared.model_repository import render_tag_model_config
from shared.model_status import check_transition
from shared.triton_admin import TritonAdmin, TritonAdminError, config_json

ROLLING = (ModelStatus.SHADOW, ModelStatus.CANARY)
_LIVE = (ModelStatus.CHAMPION, *ROLLING)


class OpError(RuntimeError):
    """An operation that cannot be done as asked; the message is one plain line for the operator."""


@dataclass(frozen=True)
class OpResult:
    """What an operation did: one line for the operator, the version(s) moved, what Triton serves."""

    message: str
    versions: list[ModelVersion] = field(default_factory=list)
    served: list[int] = field(default_factory=list)


def live_versions(versions: Iterable[ModelVersion], rollback_target: int | None) -> set[int]:
    """Versions that taggers may send to: champion, shadow, canary, and the rollback target.

    >>> sorted(live_versions([ModelVersion("m", 1, ModelStatus.RETIRED, None, None),
    ...                       ModelVersion("m", 2, ModelStatus.CHAMPION, None, None),
    ...                       ModelVersion("m", 3, ModelStatus.CANARY, None, None)], rollback_target=1))
    [1, 2, 3]
    """
    live = {v.version for v in versions if v.status in _LIVE}
    return live | ({rollback_target} if rollback_target is not None else set())


def serve_versions(admin: TritonAdmin, model_name: str, versions: Sequence[int], timeout_s: float = 300.0) -> list[int]:
    """Make Triton serve exactly ``versions`` of ``model_name`` and wait until each is ready.

    One load with a configuration override whose version policy lists the versions
    (:func:`shared.model_repository.render_tag_model_config`); versions already loaded keep
    answering while Triton builds the new instances.

    Raises
    ------
    TritonAdminError
        If Triton refuses the load or a version is not ready within ``timeout_s``.
    """
    wanted = sorted(set(versions))
    if not wanted:
        raise ValueError("serve at least one version")
    admin.load(model_name, config=config_json(render_tag_model_config(model_name, wanted)))
    for version in wanted:
        admin.wait_ready(model_name, version, timeout_s)
    return wanted


class ModelOps:
    """Registry status changes of one model, with Triton serving what they need first.

    Parameters
    ----------
    registry : ModelRegistry
        The model registry.
    admin : TritonAdmin or None
        The running Triton; None for read-only use (``list``, ``history``).
    model_name : str
        Triton model name of the tag model.
    drain_s : float
        How long a version that left a live status stays loaded (two tagger refresh intervals).
    ready_timeout_s : float
        How long a version may take to load.
    """

    def __init__(
        self, registry: ModelRegistry, admin: TritonAdmin | None, model_name: str,
        drain_s: float = 10.0, ready_timeout_s: float = 300.0,
    ) -> None:  # fmt: skip
        self.registry, self.admin, self.model = registry, admin, model_name
        self.drain_s, self.ready_timeout_s = drain_s, ready_timeout_s

    # -- reading ------------------------------------------------------------------------------

    def list_versions(self) -> list[ModelVersion]:
        return self.registry.list_versions(self.model)

    def get(self, version: int) -> ModelVersion:
        found = self.registry.get(self.model, version)
        if found is None:
            raise OpError(f"{self.model} version {version} is not registered")
        return found

    def history(self, version: int) -> list[StatusChange]:
        self.get(version)
        return self.registry.history(self.model, version)

    # -- changing -----------------------------------------------------------------------------

    def shadow(self, version: int) -> OpResult:
        """Serve ``version`` beside the champion; taggers tag with both and publish only the champion's tags."""
        return self._roll_out(version, ModelStatus.SHADOW, None)

    def canary(self, version: int, share: float) -> OpResult:
        """Serve ``version`` beside the champion; taggers route ``share`` of listings (by id hash) to it."""
        if not 0.0 < share <= 1.0:
            raise OpError(f"canary share must be in (0, 1], got {share}")
        return self._roll_out(version, ModelStatus.CANARY, share)

    def promote(self, version: int) -> OpResult:
        """Make ``version`` champion; the previous champion stays loaded as the rollback target."""
        target = self.get(version)
        if target.status == ModelStatus.CHAMPION:
            return OpResult(f"{self.model} {version} is champion already", [target], self._ready())
        self._check(target, ModelStatus.CHAMPION)
        champion = self.registry.champion(self.model)
        after = {version} | ({champion.version} if champion else set())
        served = self._serve(after)
        moved = self.registry.set_status(self.model, version, ModelStatus.CHAMPION, "promoted by ops")
        was = f"; previous champion {champion.version} kept loaded for rollback" if champion else ""
        return OpResult(f"{self.model} {version}: {target.status} -> champion{was}; {_served(served)}",
                        [moved], served)  # fmt: skip

    def rollback(self) -> OpResult:
        """Champion -> rolled-back, the previous champion restored (it is still loaded; checked first)."""
        champion = self.registry.champion(self.model)
        if champion is None:
            raise OpError(f"{self.model} has no champion to roll back")
        previous = self.registry.previous_champion(self.model)
        if previous is None:
            raise OpError(f"{self.model} has no previous champion to restore")
        served = self._serve({previous.version})  # a no-op load when it is loaded, as it should be
        try:
            rolled, restored = self.registry.rollback(self.model, "rolled back by ops")
        except RegistryError as exc:  # someone else changed the champion meanwhile
            raise OpError(str(exc)) from exc
        return OpResult(
            f"{self.model}: {rolled.version} rolled back, {restored.version} is champion again; {_served(served)}",
            [rolled, restored], served,
        )  # fmt: skip

    # -- helpers ------------------------------------------------------------------------------

    def _roll_out(self, version: int, status: ModelStatus, share: float | None) -> OpResult:
        target = self.get(version)
        if target.status != status:
            self._check(target, status)
        champion = self.registry.champion(self.model)
        if champion is None:
            raise OpError(f"{self.model} has no champion to compare {version} with; promote it instead")
        others = [v.version for v in self.registry.list_versions(self.model, ROLLING) if v.version != version]
        if others:
            busy = f"{self.model} {others[0]} is in shadow or canary already"
            raise OpError(f"{busy}; promote, reject or retire it first")
        served = self._serve({version})
        update = {"canary_share": share} if share is not None else None
        reason = f"{status} by ops" + (f", share {share:g}" if share is not None else "")
        moved = self.registry.set_status(self.model, version, status, reason, metrics_update=update)
        what = f"{status} (share {share:g})" if share is not None else str(status)
        return OpResult(f"{self.model} {version}: {target.status} -> {what}; {_served(served)}", [moved], served)

    def _check(self, current: ModelVersion, status: ModelStatus) -> None:
        try:
            check_transition(current.status, status)
        except RegistryError as exc:
            raise OpError(f"{self.model} {current.version}: {exc}") from exc

    def _admin(self) -> TritonAdmin:
        if self.admin is None:
            raise OpError("this operation needs Triton")
        if not self.admin.server_ready():
            raise OpError(f"triton at {self.admin.http_url} is not reachable or not ready")
        return self.admin

    def _ready(self) -> list[int]:
        try:
            return self.admin.ready_versions(self.model) if self.admin is not None else []
        except TritonAdminError:
            return []

    def _serve(self, adding: set[int]) -> list[int]:
        """Load live versions + ``adding`` + versions still draining; wait until all are ready."""
        admin = self._admin()
        versions = self.registry.list_versions(self.model)
        previous = self.registry.previous_champion(self.model)
        keep = live_versions(versions, previous.version if previous else None) | adding
        loaded = set(admin.ready_versions(self.model))
        since = datetime.now(UTC) - timedelta(seconds=self.drain_s)
        keep |= {v.version for v in versions if v.version in loaded and v.updated_at and v.updated_at >= since}
        try:
            return serve_versions(admin, self.model, sorted(keep), self.ready_timeout_s)
        except TritonAdminError as exc:
            raise OpError(str(exc).splitlines()[0]) from exc


def _served(versions: Sequence[int]) -> str:
    return "triton serves " + ", ".join(str(v) for v in versions)
