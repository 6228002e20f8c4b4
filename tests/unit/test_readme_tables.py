"""The README's reference tables name everything the code defines, so they cannot drift.

Names are read from the objects at test time (the settings model, the dead-letter reasons, a
metrics registry), never from a list kept here: a new setting, reason or metric fails this test
until the README's table has a row for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from streamcascade.operators import dead_letters
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def section_table(heading: str) -> tuple[list[str], list[list[str]]]:
    """The header and body rows of the table in the README section ``## heading``, each split
    into cells. Fails when the section is missing or does not hold exactly one table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index(f"## {heading}")
    except ValueError:
        pytest.fail(f"README.md has no section '## {heading}'")
    tables: list[list[list[str]]] = []
    in_table = False
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            if not in_table:
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        in_table = line.startswith("|")
    if len(tables) != 1 or len(tables[0]) < 3:
        pytest.fail(f"README.md section '## {heading}' should hold one table with rows")
    header, _separator, *rows = tables[0]
    return header, rows


def rows_by_name(heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """The table's header, and its rows keyed by the code span of their first cell
    (`` `name` `` gives ``name``)."""
    header, rows = section_table(heading)
    keyed: dict[str, list[str]] = {}
    for row in rows:
        assert len(row) == len(header), f"a row of '{heading}' has {len(row)} cells: {row}"
        match = re.fullmatch(r"`([^`]+)`", row[0])
        assert match, f"the first cell of a row of '{heading}' is not one code span: {row[0]}"
        keyed[match.group(1)] = row
    return header, keyed


def test_section_table_reads_only_the_named_section() -> None:
    header, rows = section_table("Dead letters")
    assert header == ["reason", "cause"]
    assert rows and all(len(row) == 2 for row in rows)  # nothing of the tables around it
    assert ["---", "---"] not in rows


def test_every_setting_has_a_row_with_its_environment_variable() -> None:
    header, rows = rows_by_name("Configuration")
    env_column = header.index("environment variable")
    fields = Settings.model_fields
    assert len(fields) > 10  # the model was read, not an empty stand-in
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "STREAMCASCADE_"
    missing = sorted(set(fields) - set(rows))
    assert not missing, f"settings without a row in the README's configuration table: {missing}"
    unknown = sorted(set(rows) - set(fields))
    assert not unknown, f"README configuration rows for no setting: {unknown}"
    for name in fields:
        env = f"`{prefix}{name.upper()}`"
        assert rows[name][env_column] == env, f"row of {name}: the variable should be {env}"


def test_every_setting_default_is_the_one_in_the_code() -> None:
    header, rows = rows_by_name("Configuration")
    default_column = header.index("default")
    checked = 0
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        cell = rows[name][default_column]
        if default is None:
            assert cell.startswith("unset"), f"{name} has no default; its row says {cell!r}"
        elif isinstance(default, bool | int | float | str):
            assert cell.startswith(f"`{default}`"), f"{name}'s default is {default!r}, not {cell}"
            checked += 1
    assert checked > 10


def test_every_dead_letter_reason_has_a_row() -> None:
    _, rows = rows_by_name("Dead letters")
    assert len(dead_letters.REASONS) >= 5
    missing = sorted(set(dead_letters.REASONS) - set(rows))
    assert not missing, f"dead-letter reasons missing from the README's table: {missing}"
    unknown = sorted(set(rows) - set(dead_letters.REASONS))
    assert not unknown, f"README dead-letter rows for no reason the code gives: {unknown}"


def exposed_name(family: Metric) -> str:
    """The name a scrape shows: prometheus_client keeps a counter's family name without its
    ``_total`` suffix, which every sample of the counter carries."""
    return f"{family.name}_total" if family.type == "counter" else family.name


class _LiveLLM:
    """A live LLM's health report, as a worker with a live endpoint publishes it."""

    def health(self) -> dict[str, object]:
        return {"breaker_state": "closed", "requests": 1, "latency_p95_s": 0.2}


def test_every_metric_has_a_row() -> None:
    metrics = OperatorMetrics(["hashed", "llm"])
    metrics.watch_llm(_LiveLLM())
    names = {exposed_name(family) for family in metrics.registry.collect()}
    assert len(names) > 10
    _, rows = rows_by_name("Metrics")
    missing = sorted(names - set(rows))
    assert not missing, f"metrics missing from the README's table: {missing}"
    unknown = sorted(set(rows) - names)
    assert not unknown, f"README metric rows for no metric the worker serves: {unknown}"
