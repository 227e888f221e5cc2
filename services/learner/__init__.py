"""Online learner: P(engagement | user, tag) learned from the feedback stream with river.

Pure core: :mod:`~services.learner.features`, :mod:`~services.learner.model`.
Adapters: :mod:`~services.learner.consumer` (Kafka in), :mod:`~services.learner.checkpoint`
(Postgres), :mod:`~services.learner.publisher` (``user-affinity`` out), :mod:`~services.learner.outbox`
(dead letters, tracked until delivered), :mod:`~services.learner.api` (HTTP). The loop:
:mod:`~services.learner.main`, with checkpoint writes retried off the loop
(:mod:`~services.learner.writer`) and its health and metrics (:mod:`~services.learner.health`).
Evaluation: :mod:`~services.learner.evaluate`.
"""
