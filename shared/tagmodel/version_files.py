"""What an exported version directory may hold: a portable ``model.py`` and no machine paths.

A version is copied between machines (exported on a trainer, served by Triton elsewhere), so
none of its files may name a path of the machine that exported it: :data:`ENTRY_POINT` finds
tagloop by import (or next to the repository), and :func:`make_portable` rewrites what older
exports left behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENTRY_FILE = "model.py"
_ENTRY_MARKER = "Triton entry point of a tagloop tag model version"

# parents[3] of <repository>/<model>/<version>/model.py is the directory holding the repository:
# the project root in a checkout. Only used when the stub's Python cannot import tagloop.
ENTRY_POINT = f'''"""{_ENTRY_MARKER} (written by `tagloop export`)."""

import sys
from pathlib import Path

try:
    from shared.tagmodel.backend import TritonTagModel
except ImportError:  # the stub's python lacks the tagloop install: use the project holding this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from shared.tagmodel.backend import TritonTagModel


class TritonPythonModel(TritonTagModel):
    pass
'''

# A POSIX path with at least two components, or a Windows drive path.
_ABSOLUTE = re.compile(r"^(?:/[^/\n]+){2,}/?$|^[A-Za-z]:[\\/]")


def write_entry_point(version_dir: Path) -> Path:
    """Write the version's ``model.py`` (:data:`ENTRY_POINT`) and return its path."""
    path = Path(version_dir) / ENTRY_FILE
    path.write_text(ENTRY_POINT, encoding="utf-8")
    return path


def upgrade_entry_point(version_dir: Path) -> bool:
    """Rewrite a ``model.py`` written by an older tagloop export to today's :data:`ENTRY_POINT`.

    Older exports imported the runtime from the trainer's package and wrote the exporting
    machine's project path into the file. A ``model.py`` that tagloop did not write is left alone.

    Returns
    -------
    bool
        True if the file was rewritten.
    """
    path = Path(version_dir) / ENTRY_FILE
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if text == ENTRY_POINT or _ENTRY_MARKER not in text:
        return False
    write_entry_point(version_dir)
    return True


def _path_fields(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every string under a dict key that looks like an absolute path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _path_fields(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _path_fields(v, key)
    elif isinstance(value, str) and key and _ABSOLUTE.match(value):
        yield key, value


def _json_files(version_dir: Path) -> list[Path]:
    return sorted(p for p in Path(version_dir).rglob("*.json") if p.is_file())


def absolute_paths(version_dir: Path) -> list[tuple[str, str, str]]:
    """``(file, field, path)`` of every absolute path held by a JSON field or ``model.py`` of a version."""
    version_dir = Path(version_dir)
    found = []
    for file in _json_files(version_dir):
        rel = str(file.relative_to(version_dir))
        found += [(rel, k, v) for k, v in _path_fields(json.loads(file.read_text(encoding="utf-8")))]
    entry = version_dir / ENTRY_FILE
    if entry.is_file():
        found += [(ENTRY_FILE, "", m) for m in re.findall(r"['\"](/[^'\"\s]+)['\"]", entry.read_text("utf-8"))]
    return found


def _relative(path: str, version_dir: Path) -> str:
    """A path into the version relative to it; any other path reduced to its last component."""
    p = Path(path)
    try:
        return str(p.relative_to(version_dir)) or "."
    except ValueError:
        return re.split(r"[\\/]", path.rstrip("/\\"))[-1]


def _rewrite(value: Any, version_dir: Path, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, version_dir, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, version_dir, key) for v in value]
    if isinstance(value, str) and key and _ABSOLUTE.match(value):
        return _relative(value, version_dir)
    return value


def make_portable(version_dir: Path) -> list[str]:
    """Make an exported version machine-independent; return the files rewritten.

    ``model.py`` becomes today's :data:`ENTRY_POINT` if an older tagloop export wrote it; in JSON
    files, only fields holding an absolute path change: a path into the version becomes relative
    to it, any other is reduced to its last component (the exporting machine's layout means
    nothing where the version is served). Files without absolute paths are not touched.
    """
    version_dir = Path(version_dir).resolve()
    changed = [ENTRY_FILE] if upgrade_entry_point(version_dir) else []
    for file in _json_files(version_dir):
        text = file.read_text(encoding="utf-8")
        data = json.loads(text)
        if not any(True for _ in _path_fields(data)):
            continue
        indent = 2 if text.lstrip().startswith("{\n") else None
        file.write_text(json.dumps(_rewrite(data, version_dir), indent=indent, ensure_ascii=False) + "\n", "utf-8")
        changed.append(str(file.relative_to(version_dir)))
    return changed
