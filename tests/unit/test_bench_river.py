"""``streamcascade bench river`` runs the hashed and river stages on the same events."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from streamcascade.cli import cli


def _stream(tmp_path: Path) -> Path:
    words = {"positive": "great wonderful loved", "negative": "awful boring hated"}
    rows = [{"id": i, "text": f"a {words[label]} film {i}", "label": label, "llm": {}}
            for i, label in enumerate(["positive", "negative"] * 60)]
    stream = tmp_path / "imdb.jsonl"
    stream.write_text("\n".join(json.dumps(r) for r in rows))
    return stream


def test_bench_river_compares_both_stages_on_the_same_events(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "river", "--dataset", str(_stream(tmp_path)),
                                      "--limit", "100", "--json", str(out)])

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 100 and report["batch_size"] == 1
    assert report["hashed_vs_river"] == (report["hashed"]["events_per_s"]
                                         / report["river"]["events_per_s"])
    # Two words decide the label: both stages must learn it within 100 events.
    for name in ("hashed", "river"):
        assert report[name]["progressive_accuracy"] > 0.8, report[name]
        assert report[name]["metric"] == "accuracy"
        assert report[name]["progressive_metric"] == report[name]["progressive_accuracy"]


def test_bench_river_takes_a_river_spec_and_batches(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, [
        "bench", "river", "--dataset", str(_stream(tmp_path)), "--limit", "60", "--batch-size",
        "10", "--river-model", "feature_extraction.BagOfWords|naive_bayes.MultinomialNB",
        "--json", str(out)])

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["river_model"] == "feature_extraction.BagOfWords | naive_bayes.MultinomialNB"
    assert report["batch_size"] == 10
    assert report["river"]["progressive_accuracy"] > 0.6


def test_bench_river_refuses_a_bad_spec(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "bench", "river", "--dataset", str(_stream(tmp_path)), "--river-model", "os.system",
        "--json", str(tmp_path / "bench.json")])

    assert result.exit_code != 0
    assert "not a River class" in result.output
