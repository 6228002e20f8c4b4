"""The LLM client and the CLI against the real local LLM server (llama.cpp running SmolLM2-135M).

The model is tiny and its answers are often wrong; what is tested is that constrained decoding
yields only valid labels, that many concurrent requests all complete, and that the server process
starts, answers and stops cleanly.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamcascade.models.llm.openai import OpenAIChatLLM
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event

# The ``local_llm`` fixture (tests/operator/conftest.py) gives ``base_url``, ``model`` and ``pid``.
LLMEndpoint = Any

_BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "datasets"
DATASETS = Path(os.environ.get("STREAMCASCADE_DATASETS", _BESIDE_CHECKOUT))


def stream(name: str, count: int, max_chars: int = 400) -> list[Event]:
    """The first short events of a shared stream, or made-up texts if it is not on this machine."""
    path = DATASETS / f"{name}.jsonl.gz"
    if not path.is_file():
        return [
            Event(str(i), f"Made-up text number {i} about a day at work.") for i in range(count)
        ]
    with gzip.open(path, "rt") as f:
        rows = (json.loads(line) for line in f)
        short = (r for r in rows if len(r["text"]) <= max_chars)
        return [Event(str(r["id"]), r["text"]) for r in islice(short, count)]


@pytest.mark.parametrize("constrain", ["grammar", "json_schema"])
async def test_constrained_classification_returns_only_valid_labels(
    local_llm: LLMEndpoint, constrain: str
) -> None:
    task = TASKS["isear"]  # seven labels: the hardest to hit by chance
    llm = OpenAIChatLLM(
        local_llm.base_url, local_llm.model, task, constrain=constrain, concurrency=4, timeout=120
    )
    events = stream("isear", 12)
    async with llm:
        answers = await llm.answer(events)
    assert len(answers) == len(events)
    for answer in answers:
        assert answer.error is None, answer.error
        assert answer.label is not None and 0 <= answer.label < len(task.labels)
        assert answer.raw is not None and task.answer_words[answer.label] in answer.raw
    assert llm.stats.prompt_tokens > 0 and llm.stats.completion_tokens > 0


async def test_many_concurrent_requests_all_complete(local_llm: LLMEndpoint) -> None:
    task = TASKS["hatespeech"]
    llm = OpenAIChatLLM(
        local_llm.base_url,
        local_llm.model,
        task,
        constrain="grammar",
        concurrency=16,
        timeout=120,
        cache_size=0,
    )
    events = stream("hatespeech", 48)
    async with llm:
        answers = await llm.answer(events)
    assert [a.label is not None for a in answers] == [True] * len(events)
    assert llm.stats.failed == 0 and llm.stats.requests == len(events)


async def test_an_unconstrained_answer_is_read_or_reported(local_llm: LLMEndpoint) -> None:
    llm = OpenAIChatLLM(local_llm.base_url, local_llm.model, TASKS["imdb"], constrain="none")
    async with llm:
        answers = await llm.answer(stream("imdb", 4, max_chars=600))
    for answer in answers:
        assert (answer.label is None) == (answer.error is not None)
        assert answer.raw is not None  # the server answered; only the reading may fail


def test_serve_prints_its_url_answers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamcascade", "llm", "serve", "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), url
        models = httpx.get(f"{url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smollm2"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server's port is closed: its process is gone
        try:
            httpx.get(f"{url}/models", timeout=1)
        except httpx.TransportError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the LLM server still answers after serve stopped")


def test_ask_answers_one_text_as_json(local_llm: LLMEndpoint) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamcascade",
            "llm",
            "ask",
            "I loved every minute of this film.",
            "--llm-url",
            local_llm.base_url,
            "--llm-model",
            local_llm.model,
            "--constrain",
            "grammar",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(out.stdout)
    assert answer["label"] in ("negative", "positive") and answer["error"] is None


def test_bench_llm_writes_its_figures(local_llm: LLMEndpoint, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamcascade",
            "bench",
            "llm",
            "--json",
            str(out),
            "--llm-url",
            local_llm.base_url,
            "--llm-model",
            local_llm.model,
            "--concurrency",
            "1,2",
            "--requests",
            "2",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.read_text())
    assert report["overhead_vs_httpx"] > 0
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        for side in ("client", "httpx"):
            assert level[side]["requests"] == 2 and level[side]["failures"] == 0
            assert 0 < level[side]["p50_ms"] <= level[side]["p99_ms"]
