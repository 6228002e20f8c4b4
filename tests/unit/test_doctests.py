"""Every example in the package's docstrings runs, module by module, by its import name.

Examples that need what a unit test does not have (a broker, a model server, a Faust app) are
marked ``# doctest: +SKIP`` where they are written.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest
from source_modules import SourceModule, source_modules

WITH_EXAMPLES = [
    m for m in source_modules() if not m.runs_on_import and ">>>" in m.path.read_text()
]


def test_examples_are_found() -> None:
    # The finder below reads the files; a layout it cannot read would leave nothing to run.
    assert len(WITH_EXAMPLES) >= 10


@pytest.mark.parametrize("module", WITH_EXAMPLES, ids=str)
def test_docstring_examples_run(module: SourceModule) -> None:
    imported = importlib.import_module(module.name)
    tests = doctest.DocTestFinder().find(imported, module.name)
    assert any(test.examples for test in tests), f"{module}: '>>>' in its source, no example found"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
