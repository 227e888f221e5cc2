"""The docstring examples of every module in shared/ and services/ run, and pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import services
import shared


def modules() -> list[str]:
    names = []
    for package in (shared, services):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
