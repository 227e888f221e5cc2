"""How every ``tagloop`` command prints a result: JSON with ``--json``, else one ``key value`` line each.

>>> print_result({"b": 2, "a": 1}, as_json=True)
{
  "a": 1,
  "b": 2
}
>>> print_result({"events_per_s": 3740}, as_json=False)
events_per_s                     3740
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import typer


def print_result(result: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    for key, value in result.items():
        typer.echo(f"{key:32} {value}")
