"""The examples in docstrings and the README run and print what they claim."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

MODULES = ["fastdissect", "fastdissect.scoring", "fastdissect.masks", "fastdissect.quantile",
           "fastdissect.top_quantile", "fastdissect.top_images", "fastdissect.identity", "fastdissect._ext", "fastdissect.datasets.custom",
           "fastdissect.datasets.builtin", "fastdissect.explanations", "fastdissect.formula", "fastdissect.unit_masks", "fastdissect.rotation", "fastdissect._atomic"]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
