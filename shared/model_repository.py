"""Layout of the Triton model repository that tagloop writes and serves, and its one config template.

``<repository>/<model_name>/config.pbtxt`` plus numbered version directories; a version is
complete once its ``model_card.json`` is written (export renames a finished directory into
place), so only versions with a card count. Which version *serves* is the model registry's
business (:mod:`shared.model_registry`); this module only knows what is on disk.

``config.pbtxt`` of the tag model is rendered by :func:`render_tag_model_config` from the one
template below; ``triton_models/tag_model/config.pbtxt`` is its rendering (a unit test fails
when the file drifts), and the exporter writes it into repositories that lack one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from string import Template

MODEL_CARD_FILE = "model_card.json"
CONFIG_FILE = "config.pbtxt"
DEFAULT_MAX_BATCH_SIZE = 64

_TAG_MODEL_CONFIG = Template("""\
# tagloop tag model: MiniLM encoder + tag head, served by tagloop's Python backend (shared/tagmodel).
# Rendered by shared.model_repository.render_tag_model_config: edit the template there, not this file.
# Version directories (1/, 2/, ...) are written by `tagloop export` and are not in git.
name: "$model_name"
backend: "python"
max_batch_size: $max_batch_size

input [
  {
    name: "TEXT"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }
]
output [
  {
    # Calibrated sigmoid of the tag head per tag, in the order of the version's model_card.json vocabulary.
    name: "PROBS"
    data_type: TYPE_FP32
    dims: [ -1 ]
  },
  {
    # The fine-tuned mean-pooled, L2-normalised embedding (zero-shot of cold-start tags).
    name: "EMBEDDING"
    data_type: TYPE_FP32
    dims: [ 384 ]
  }
]

# Many small requests from the tagger: a short wait merges them into one forward pass.
dynamic_batching {
  preferred_batch_size: [ 16, 32, 64 ]
  max_queue_delay_microseconds: 2000
}

# KIND_AUTO becomes KIND_GPU (one instance per GPU) where Triton sees a GPU, KIND_CPU otherwise;
# the runtime picks CUDA or CPU from model_instance_kind.
instance_group [
  {
    kind: KIND_AUTO
    count: 1
  }
]

$version_policy_comment
version_policy: $version_policy
""")


def render_tag_model_config(
    model_name: str = "tag_model",
    versions: Sequence[int] | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> str:
    """``config.pbtxt`` of the tag model.

    Parameters
    ----------
    model_name : str
        Triton model name (``name:`` must equal the directory name).
    versions : Sequence[int] or None
        Serve exactly these versions (``specific``: e.g. the champion and a candidate side by side);
        None serves the newest version only.
    max_batch_size : int
        Largest batch Triton forms (also the runtime's inner batch size).

    Examples
    --------
    >>> "version_policy: { specific: { versions: [ 1, 3 ] } }" in render_tag_model_config(versions=[3, 1])
    True
    """
    if versions:
        listed = ", ".join(str(v) for v in sorted(set(versions)))
        policy, comment = f"{{ specific: {{ versions: [ {listed} ] }} }}", "# Serve exactly these versions."
    else:
        policy = "{ latest: { num_versions: 1 } }"
        comment = "# Serve the newest version; a new export is picked up by a repository poll or a load request."
    return _TAG_MODEL_CONFIG.substitute(
        model_name=model_name, max_batch_size=max_batch_size, version_policy=policy, version_policy_comment=comment
    )


def write_model_config(repository: Path, model_name: str, overwrite: bool = False) -> Path:
    """Write the tag model's ``config.pbtxt`` into ``repository`` unless one exists (or ``overwrite``)."""
    path = Path(repository) / model_name / CONFIG_FILE
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{CONFIG_FILE}.{os.getpid()}")
        tmp.write_text(render_tag_model_config(model_name), encoding="utf-8")
        tmp.replace(path)  # a polling Triton never reads half a file
    return path


def version_dir(repository: Path, model_name: str, version: int) -> Path:
    """``<repository>/<model_name>/<version>``."""
    return Path(repository) / model_name / str(int(version))


def versions(repository: Path, model_name: str) -> list[int]:
    """Complete versions of ``model_name`` (those holding a model card), ascending."""
    model_dir = Path(repository) / model_name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MODEL_CARD_FILE).is_file())


def latest_version(repository: Path, model_name: str) -> int | None:
    """Highest numbered version directory of ``model_name`` that holds a model card, or None."""
    return max(versions(repository, model_name), default=None)


def next_version(repository: Path, model_name: str) -> int:
    """The number a new export takes: one above every numbered directory, complete or not."""
    model_dir = Path(repository) / model_name
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1
