"""``streamcascade bench river`` runs both learners on the same events and scores them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from streamcascade.cli import cli


def test_bench_river_compares_both_learners_on_the_same_events(tmp_path: Path) -> None:
    words = {"positive": "great wonderful loved", "negative": "awful boring hated"}
    rows = [{"id": i, "text": f"a {words[label]} film {i}", "label": label, "llm": {}}
            for i, label in enumerate(["positive", "negative"] * 60)]
    stream = tmp_path / "imdb.jsonl"
    stream.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "bench.json"

    result = CliRunner().invoke(cli, ["bench", "river", "--dataset", str(stream), "--limit", "100",
                                      "--json", str(out)])

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 100
    assert report["stage_vs_river"] > 0
    # Two words decide the label: the stage must learn it within 100 events.
    assert report["stage"]["progressive_accuracy"] > 0.8
    assert 0.0 <= report["river"]["progressive_accuracy"] <= 1.0
