"""What tagloop's Triton Python-backend models share: text in, one pass over every merged request.

Triton's dynamic batcher hands ``execute`` several requests at once. :func:`answer_merged`
decodes each request's ``TEXT`` tensor, runs the model once over all valid texts, and
slices the outputs back per request; a request with bad input gets its own INVALID_ARG
error without failing the others, and a model failure answers every request with
INTERNAL instead of crashing the instance. ``pb`` is ``triton_python_backend_utils``
(passed in: it exists only inside Triton).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class InvalidText(ValueError):
    """One request's TEXT cannot be used; answered with INVALID_ARG."""


def decode_texts(values: np.ndarray, allow_empty: bool = False) -> list[str]:
    """UTF-8 texts of one request's TEXT tensor; raise :class:`InvalidText` on bad items."""
    texts = []
    for i, value in enumerate(values.reshape(-1)):
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidText(f"TEXT[{i}] is not valid UTF-8: {exc}") from exc
        elif isinstance(value, str):
            text = value
        else:
            raise InvalidText(f"TEXT[{i}] has type {type(value).__name__}, expected bytes")
        if not allow_empty and not text.strip():
            raise InvalidText(f"TEXT[{i}] is empty")
        texts.append(text)
    return texts


def answer_merged(
    pb: Any,
    requests: list[Any],
    run: Callable[[list[str]], dict[str, np.ndarray]],
    what: str,
    allow_empty: bool = False,
) -> list[Any]:
    """One response per request: ``run`` over all valid texts once, outputs sliced per request.

    ``run`` maps texts to output tensors by name (first axis = texts, in order).
    """
    responses: list[Any] = [None] * len(requests)
    texts: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (request index, start, end) into texts
    for r, request in enumerate(requests):
        try:
            tensor = pb.get_input_tensor_by_name(request, "TEXT")
            if tensor is None:
                raise InvalidText("missing input TEXT")
            request_texts = decode_texts(tensor.as_numpy(), allow_empty)
        except InvalidText as exc:
            responses[r] = pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
            continue
        spans.append((r, len(texts), len(texts) + len(request_texts)))
        texts.extend(request_texts)
    if not spans:
        return responses
    try:
        outputs = run(texts)
    except Exception as exc:  # answer each request instead of crashing the instance
        error = pb.TritonError(f"{what} failed: {exc}", pb.TritonError.INTERNAL)
        for r, _, _ in spans:
            responses[r] = pb.InferenceResponse(error=error)
        return responses
    for r, start, end in spans:
        tensors = [pb.Tensor(name, array[start:end]) for name, array in outputs.items()]
        responses[r] = pb.InferenceResponse(output_tensors=tensors)
    return responses
