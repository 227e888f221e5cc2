"""The learner's settings live in the one settings object: ``Settings().learner`` (``TAGLOOP_LEARNER__*``)."""

from shared.settings import LearnerSettings

__all__ = ["LearnerSettings"]
