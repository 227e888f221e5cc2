"""The serving tag model, shared by the tagger, the trainer and the Triton Python backend.

* :mod:`shared.tagmodel.tag_ids`: the one tag-id scheme (Unicode-safe slugs).
* :mod:`shared.tagmodel.card`: the model card of an exported version (vocabulary, thresholds, provenance).
* :mod:`shared.tagmodel.head`: the tag head's inference in numpy (TF-IDF lexicon + linear scorers).
* :mod:`shared.tagmodel.decide`: from ``PROBS`` to tags (thresholds, hierarchy closure, taxonomy, zero-shot).
* :mod:`shared.tagmodel.runtime`: one exported version in process (encoder + head).
* :mod:`shared.tagmodel.backend`: the Triton Python-backend model every version's ``model.py`` imports.

Nothing here trains (that is the trainer service), and nothing heavy is imported at import time:
onnxruntime, torch and transformers are imported when a runtime is built.
"""
