"""The misbehaving endpoint the LLM fault benchmark runs against: each behaviour, on cue."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from streamcascade.benchkit.fault_server import FAULTY, HEALTHY, FaultServer, FaultServerProcess
from streamcascade.models.llm.prompts import PromptTemplate
from streamcascade.models.tasks import TASKS

HATE = TASKS["hatespeech"]


def _body(text: str, constrain: str = "grammar") -> dict[str, object]:
    template = PromptTemplate(HATE, constrain=constrain)
    return {"model": "m", "messages": template.messages(text), **template.constraint()}


def test_the_faulty_script_misbehaves_in_six_ways_in_turn() -> None:
    with FaultServer(FAULTY, slow_seconds=0.4) as server, httpx.Client(timeout=2.0) as client:
        url = server.url + "/chat/completions"
        limited = client.post(url, json=_body("a"))
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
        assert client.post(url, json=_body("b")).status_code == 500
        garbled = client.post(url, json=_body("c"))
        assert garbled.status_code == 200
        with pytest.raises(ValueError):
            json.loads(garbled.content)
        with pytest.raises(httpx.ReadTimeout):
            client.post(url, json=_body("d"), timeout=0.3)  # hangs
        started = time.monotonic()
        slow = client.post(url, json=_body("e"))
        assert slow.status_code == 200 and time.monotonic() - started >= 0.4
        started = time.monotonic()
        quick = client.post(url, json=_body("f"))
        assert quick.status_code == 200 and time.monotonic() - started < 0.3
        assert quick.json()["choices"][0]["message"]["content"] == "no"  # the first allowed word
        assert client.post(url, json=_body("g")).status_code == 429  # the cycle starts again
    assert server.requests == 7 and server.served["429"] == 2 and server.served["hang"] == 1


def test_a_healthy_server_answers_every_request_with_the_mapped_word() -> None:
    answers = {"some text": "yes"}
    with FaultServer(HEALTHY, answers=answers) as server, httpx.Client(timeout=2.0) as client:
        url = server.url + "/chat/completions"
        replies = [client.post(url, json=_body(t, "json_schema")) for t in ["some text", "x"] * 3]
    contents = [r.json()["choices"][0]["message"]["content"] for r in replies]
    assert contents == ['{"label": "yes"}', '{"label": "no"}'] * 3
    assert server.served == {"ok": 6}


def test_stopping_drops_a_hanging_request_and_frees_the_port() -> None:
    server = FaultServer(("hang",)).start()
    with httpx.Client(timeout=5.0) as client:
        url = server.url + "/chat/completions"
        started = time.monotonic()
        stopper = threading.Timer(0.3, server.stop)
        stopper.start()
        with pytest.raises(httpx.HTTPError):
            client.post(url, json=_body("a"))
        stopper.join()
    assert time.monotonic() - started < 3.0


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="actions"):
        FaultServer(("ok", "teapot"))


def test_the_server_in_a_child_process_follows_its_script() -> None:
    with FaultServerProcess(("500", "ok"), answers={"z": "yes"}) as server:
        with httpx.Client(timeout=2.0) as client:
            url = server.url + "/chat/completions"
            replies = [client.post(url, json=_body("z")) for _ in range(4)]
        assert [r.status_code for r in replies] == [500, 200, 500, 200]
        assert replies[1].json()["choices"][0]["message"]["content"] == "yes"
        process = server._process
        assert process is not None
    assert process.poll() is not None  # stopped with the block
