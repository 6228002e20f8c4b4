"""The LLM client against a real misbehaving HTTP server on loopback.

The server below speaks HTTP/1.1 over a real TCP socket and follows a script, one action per
request: answer, answer slowly, 429 with Retry-After, 500, malformed JSON, drop the connection,
reject the constraint. Every test checks that each event ends with an answer or a clear failure,
that no call outlives its limits, and that retries and the breaker behave as configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from streamcascade.llm_server import free_port
from streamcascade.models.llm.openai import OpenAIChatLLM
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event

IMDB = TASKS["imdb"]
SECRET = "sk-test-DO-NOT-LEAK-4f9c2a"


@dataclass
class Seen:
    """One request as the server received it."""

    at: float
    headers: dict[str, str]
    body: dict[str, object]


@dataclass
class FaultServer:
    """An HTTP server that misbehaves on cue: ``script`` is consumed one action per request.

    Actions: ``"ok"`` / ``"ok:<content>"``, ``"oddusage:<usage JSON>"`` (ok, with that usage),
    ``"slow:<seconds>"``, ``"429:<retry-after>"``, ``"500"``, ``"500-echo"`` (echoes the
    request's Authorization header), ``"malformed"``, ``"nochoices"``, ``"drop"`` (closes the
    connection without answering), ``"reject-constraint"``
    (400 when the body has a constraint, else ok).
    """

    script: list[str] = field(default_factory=list)
    default: str = "ok"
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = json.loads(await reader.readexactly(int(headers.get("content-length", 0))))
                self.seen.append(Seen(time.monotonic(), headers, body))
                action = self.script.pop(0) if self.script else self.default
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    keep = await self._act(action, headers, body, reader, writer)
                finally:
                    self.in_flight -= 1
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _act(
        self,
        action: str,
        headers: dict[str, str],
        body: dict[str, object],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        kind, _, arg = action.partition(":")
        if kind == "slow":
            # A client that gives up closes the connection: stop waiting then, as a server would.
            try:
                gone = await asyncio.wait_for(reader.read(1), float(arg))
            except TimeoutError:
                gone = None
            if gone is not None:
                return False
            kind, arg = "ok", ""
        if kind == "reject-constraint":
            if "grammar" in body or "response_format" in body:
                self._send(writer, 400, b'{"error": "unknown field response_format"}')
                return True
            kind = "ok"
        usage: object = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        if kind == "oddusage":  # ok, with the usage given (JSON; Infinity included)
            kind, usage, arg = "ok", json.loads(arg), ""
        if kind == "ok":
            messages = body["messages"]
            assert isinstance(messages, list)
            content = arg or ('{"label": "positive"}' if "response_format" in body else "positive")
            payload = {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                "usage": usage,
            }
            self._send(writer, 200, json.dumps(payload).encode())
        elif kind == "429":
            self._send(writer, 429, b'{"error": "slow down"}', {"Retry-After": arg})
        elif kind == "500":
            self._send(writer, 500, b'{"error": "internal"}')
        elif kind == "500-echo":
            echoed = json.dumps({"error": "bad key", "got": headers.get("authorization", "")})
            self._send(writer, 500, echoed.encode())
        elif kind == "401-echo":
            echoed = json.dumps({"error": "bad key", "got": headers.get("authorization", "")})
            self._send(writer, 401, echoed.encode())
        elif kind == "malformed":
            self._send(writer, 200, b'{"choices": [{"message": {"content": "posi')
        elif kind == "nochoices":
            self._send(writer, 200, b'{"choices": []}')
        elif kind == "drop":
            writer.transport.abort()
            return False
        else:
            raise AssertionError(f"unknown action {action!r}")
        await writer.drain()
        return True

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        head = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
        head += [
            f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    fault_server = FaultServer()
    await fault_server.start()
    yield fault_server
    await fault_server.stop()


def make(server: FaultServer, **options: object) -> OpenAIChatLLM:
    settings: dict[str, object] = {
        "api_key": SECRET,
        "timeout": 2.0,
        "retries": 2,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "breaker_failures": 100,
        "constrain": "grammar",
    }
    settings.update(options)
    return OpenAIChatLLM(server.url, "fake-model", IMDB, **settings)  # type: ignore[arg-type]


def events(n: int, prefix: str = "text") -> list[Event]:
    return [Event(str(i), f"{prefix} {i}") for i in range(n)]


async def test_answers_send_the_key_and_charge_the_usage(server: FaultServer) -> None:
    llm = make(server, prompt_price_per_1k=0.5, completion_price_per_1k=1.5, cost=42.0)
    async with llm:
        answers = await llm.answer(events(3)) + await llm.answer(events(1))  # the last is cached
    assert [a.label for a in answers] == [1, 1, 1, 1]
    assert all(a.error is None for a in answers)
    assert [a.cost for a in answers] == [42.0] * 4  # paper units, cached or not
    assert llm.stats.spent == pytest.approx(3 * (100 * 0.5 / 1000 + 10 * 1.5 / 1000))
    assert (llm.stats.prompt_tokens, llm.stats.completion_tokens) == (300, 30)
    assert all(s.headers["authorization"] == f"Bearer {SECRET}" for s in server.seen)
    assert all(s.body["grammar"] == 'root ::= "negative" | "positive"' for s in server.seen)


async def test_an_unreadable_usage_keeps_the_answer(server: FaultServer) -> None:
    server.script = ['oddusage:{"prompt_tokens": "n/a"}', 'oddusage:{"prompt_tokens": Infinity}',
                     'oddusage:{"completion_tokens": [1]}']
    llm = make(server)
    async with llm:
        answers = await llm.answer(events(3))
    assert [(a.label, a.error) for a in answers] == [(1, None)] * 3
    assert len(server.seen) == 3 and llm.stats.prompt_tokens == 0


async def test_a_slow_server_times_out_within_the_limits(server: FaultServer) -> None:
    server.default = "slow:30"
    llm = make(server, timeout=0.3, retries=1)
    started = time.monotonic()
    async with llm:
        (answer,) = await llm.answer(events(1))
    elapsed = time.monotonic() - started
    assert answer.label is None
    assert answer.error is not None and answer.error.startswith("LLMTimeoutError")
    assert "after 2 attempts" in answer.error
    assert len(server.seen) == 2
    assert elapsed < 0.3 * 2 + 0.05 + 1.0  # two attempts, one backoff, and slack for a busy box


async def test_a_slow_answer_within_the_timeout_is_kept(server: FaultServer) -> None:
    server.script = ["slow:0.2"]
    llm = make(server, timeout=2.0)
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert answer.label == 1 and len(server.seen) == 1


async def test_429_waits_for_retry_after_then_answers(server: FaultServer) -> None:
    server.script = ["429:1"]
    llm = make(server)
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert answer.label == 1
    assert len(server.seen) == 2
    assert server.seen[1].at - server.seen[0].at >= 0.95
    assert llm.stats.retries == 1
    assert llm.breaker.state == "closed"  # a busy server is not a dead one


async def test_a_retry_after_beyond_the_limit_fails_at_once(server: FaultServer) -> None:
    server.default = "429:3600"
    llm = make(server, max_retry_after=5.0)
    started = time.monotonic()
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert time.monotonic() - started < 1.0
    assert answer.label is None and answer.error is not None
    assert "LLMUnavailableError" in answer.error and "3600" in answer.error
    assert len(server.seen) == 1


@pytest.mark.parametrize("fault", ["500", "malformed", "nochoices", "drop"])
async def test_a_passing_fault_is_retried(server: FaultServer, fault: str) -> None:
    server.script = [fault, fault]
    llm = make(server, retries=2)
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert answer.label == 1, answer.error
    assert len(server.seen) == 3
    assert llm.stats.retries == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", "LLMUnavailableError"),
        ("malformed", "LLMResponseError"),
        ("nochoices", "LLMResponseError"),
        ("drop", "LLMUnavailableError"),
    ],
)
async def test_a_lasting_fault_ends_in_a_clear_failure(
    server: FaultServer, fault: str, error: str
) -> None:
    server.default = fault
    llm = make(server, retries=2)
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert answer.label is None and answer.error is not None
    assert answer.error.startswith(error) and "after 3 attempts" in answer.error
    assert len(server.seen) == 3


async def test_an_unreachable_server_fails_fast() -> None:
    llm = OpenAIChatLLM(f"http://127.0.0.1:{free_port()}", "m", IMDB, retries=1, backoff_max=0.05)
    started = time.monotonic()
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert time.monotonic() - started < 2.0
    assert answer.label is None and answer.error is not None
    assert answer.error.startswith("LLMUnavailableError: cannot reach")


async def test_the_breaker_stops_hammering_a_dead_server_and_probes_it_later(
    server: FaultServer,
) -> None:
    server.default = "500"
    llm = make(server, retries=0, breaker_failures=3, breaker_reset=0.5, concurrency=1)
    async with llm:
        answers = await llm.answer(events(10))
        assert len(server.seen) == 3  # the fourth event on found the breaker open
        assert llm.breaker.state == "open"
        assert sum("circuit breaker open" in (a.error or "") for a in answers) == 7
        assert all(a.label is None and a.error for a in answers)

        server.default = "ok"
        (early,) = await llm.answer(events(1, "early"))
        assert early.label is None and len(server.seen) == 3
        await asyncio.sleep(0.55)
        (probe,) = await llm.answer(events(1, "probe"))
        assert probe.label == 1 and len(server.seen) == 4
        assert llm.breaker.state == "closed"


async def test_a_blip_on_concurrent_calls_does_not_open_the_breaker(server: FaultServer) -> None:
    # Four calls out at once all time out: one blip, not four failures in a row; their
    # retries find the server back.
    server.script = ["slow:0.3"] * 4
    llm = make(server, timeout=0.1, retries=2, breaker_failures=3, concurrency=4)
    async with llm:
        answers = await llm.answer(events(4))
    assert [a.label for a in answers] == [1] * 4
    assert llm.breaker.state == "closed" and llm.breaker.times_opened == 0
    assert len(server.seen) == 8


async def test_a_failed_probe_opens_the_breaker_again(server: FaultServer) -> None:
    server.default = "500"
    llm = make(server, retries=0, breaker_failures=2, breaker_reset=0.3, concurrency=1)
    async with llm:
        await llm.answer(events(2))
        assert llm.breaker.state == "open"
        await asyncio.sleep(0.35)
        await llm.answer(events(3, "probe"))
    assert len(server.seen) == 3  # one probe only, then open again
    assert llm.breaker.state == "open" and llm.breaker.times_opened == 2


async def test_the_concurrency_limit_holds(server: FaultServer) -> None:
    server.default = "slow:0.1"
    llm = make(server, concurrency=3)
    async with llm:
        answers = await llm.answer(events(12))
    assert all(a.label == 1 for a in answers)
    assert server.max_in_flight == 3


async def test_nothing_is_lost_in_a_storm_of_faults(server: FaultServer) -> None:
    faults = ["ok", "500", "malformed", "drop", "429:0", "nochoices", "slow:0.05", "ok:maybe"]
    server.script = [faults[i % len(faults)] for i in range(120)]
    llm = make(server, concurrency=8, retries=1)
    batch = events(60)
    async with llm:
        answers = await llm.answer(batch)
    assert len(answers) == len(batch)
    for answer in answers:
        assert (answer.label is not None) != (answer.error is not None)
        if answer.label is None:
            assert answer.error is not None
            assert answer.error.split(":")[0] in {
                "LLMUnavailableError",
                "LLMResponseError",
                "LLMTimeoutError",
            } or answer.error.startswith("answer outside the labels")
    assert llm.stats.events == 60
    assert llm.stats.answered + llm.stats.no_label + llm.stats.failed == 60


async def test_an_answer_outside_the_labels_is_no_answer_and_not_retried(
    server: FaultServer,
) -> None:
    server.default = "ok:maybe"
    llm = make(server, constrain="none")
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert answer.label is None and answer.raw == "maybe"
    assert answer.error is not None and answer.error.startswith("answer outside the labels")
    assert len(server.seen) == 1


async def test_a_server_that_rejects_the_constraint_is_asked_without_it(
    server: FaultServer,
) -> None:
    server.default = "reject-constraint"
    llm = make(server, constrain="json_schema")
    async with llm:
        answers = await llm.answer(events(1, "a")) + await llm.answer(events(1, "b"))
    assert [a.label for a in answers] == [1, 1]
    # The first event: rejected, then asked plainly; the second goes plainly at once.
    assert ["response_format" in s.body for s in server.seen] == [True, False, False]


async def test_a_passing_fault_after_a_rejected_constraint_is_retried(
    server: FaultServer,
) -> None:
    # Rejected with the constraint, then a 503 without it: a server fault, retried, not the 400.
    server.script = ["reject-constraint", "500", "reject-constraint"]
    llm = make(server, constrain="json_schema")
    async with llm:
        answers = await llm.answer(events(1))
    assert [(a.label, a.error) for a in answers] == [(1, None)]
    assert ["response_format" in s.body for s in server.seen] == [True, False, True, False]


async def test_the_cache_answers_repeats_and_stays_bounded(server: FaultServer) -> None:
    llm = make(server, cache_size=2)
    async with llm:
        await llm.answer([Event("1", "a"), Event("2", "b")])
        await llm.answer([Event("3", "a")])  # cached
        assert len(server.seen) == 2 and llm.stats.cache_hits == 1
        await llm.answer([Event("4", "c")])  # evicts "b", the least recently used
        await llm.answer([Event("5", "b")])
        assert len(server.seen) == 4
        await llm.answer([Event("6", "a"), Event("7", "a"), Event("8", "a")])  # "a" was evicted
    assert len(server.seen) == 5  # one request for three identical prompts in flight together


async def test_the_key_never_reaches_an_error_a_log_or_a_repr(
    server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.script = ["500-echo", "500-echo", "500-echo", "401-echo"]
    llm = make(server, retries=2)
    async with llm:
        answers = await llm.answer(events(1)) + await llm.answer(events(1, "other"))
    errors = [a.error or "" for a in answers]
    assert errors[0].startswith("LLMUnavailableError") and errors[1].startswith("LLMResponseError")
    assert "**********" in errors[0]  # the echoed header, masked
    text = "\n".join([*errors, caplog.text, repr(llm), str(llm.stats)])
    assert SECRET not in text
    assert any(s.headers["authorization"].endswith(SECRET) for s in server.seen)


# -- request timeout, deadline, hedging, health ------------------------------------------------


async def warm(llm: OpenAIChatLLM, n: int = 24) -> None:
    """Enough fast answers for the client to know the endpoint's latency."""
    await llm.answer(events(n, "warm"))


def test_the_defaults_cut_a_hung_request_long_before_the_event_deadline() -> None:
    llm = OpenAIChatLLM("http://127.0.0.1:9", "m", IMDB)
    assert llm.timeout <= 10.0  # a label is a few tokens: a request silent for longer is stuck
    assert llm.deadline >= 2 * llm.timeout  # room for a retry after a cut request
    assert llm.hedge


async def test_a_hung_request_is_hedged_after_the_observed_p95(server: FaultServer) -> None:
    llm = make(server, timeout=5.0, cost=10.0)
    async with llm:
        await warm(llm)
        server.script = ["slow:30"]  # this event's first request hangs; its hedge is answered
        started = time.monotonic()
        (answer,) = await llm.answer(events(1, "hung"))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.1)
        assert server.in_flight == 0  # the hung request was cancelled once the hedge answered
    assert answer.label == 1 and elapsed < 1.0
    assert (llm.stats.hedges, llm.stats.hedge_wins, llm.stats.timeouts) == (1, 1, 0)
    assert llm.stats.requests == 24 + 2  # both requests counted...
    assert answer.cost == 2 * 10.0 and answer.calls == 2  # ...and charged
    assert llm.stats.prompt_tokens == (24 + 2) * 100


async def test_no_hedge_before_the_latency_is_known_or_for_a_quick_answer(
    server: FaultServer,
) -> None:
    server.script = ["slow:0.3"]
    llm = make(server, timeout=5.0)
    async with llm:
        (first,) = await llm.answer(events(1, "first"))  # no latency observed yet: no hedge
        await warm(llm)
        (quick,) = await llm.answer(events(1, "quick"))
    assert first.label == 1 and quick.label == 1 and quick.calls == 1
    assert llm.stats.hedges == 0 and llm.stats.requests == 1 + 24 + 1


async def test_hedging_can_be_turned_off(server: FaultServer) -> None:
    llm = make(server, timeout=0.3, hedge=False)
    async with llm:
        await warm(llm)
        server.script = ["slow:30"]
        (answer,) = await llm.answer(events(1, "hung"))
    assert answer.label == 1  # the retry after the cut request answered
    assert (llm.stats.hedges, llm.stats.timeouts, llm.stats.retries) == (0, 1, 1)


async def test_a_failed_hedge_leaves_the_first_request_in_the_race(server: FaultServer) -> None:
    llm = make(server, timeout=5.0, retries=0)
    async with llm:
        await warm(llm)
        server.script = ["slow:0.15", "500"]  # slower than the p95, quicker than any timeout
        (answer,) = await llm.answer(events(1, "slow"))
    assert answer.label == 1 and answer.calls == 2
    assert (llm.stats.hedges, llm.stats.hedge_wins) == (1, 0)


async def test_the_deadline_ends_an_event_whatever_the_retries(server: FaultServer) -> None:
    server.default = "slow:30"
    llm = make(server, timeout=0.2, retries=100, deadline=0.7, backoff_max=0.01)
    started = time.monotonic()
    async with llm:
        (answer,) = await llm.answer(events(1))
    assert time.monotonic() - started < 0.7 + 0.5
    assert answer.label is None and answer.error is not None and answer.retryable
    assert answer.error.startswith("LLMTimeoutError") and "deadline" in answer.error
    assert llm.stats.deadline_exceeded == 1 and llm.stats.timeouts >= 2


async def test_a_hung_event_does_not_hold_back_the_next_batch(server: FaultServer) -> None:
    server.script = ["slow:2"]
    llm = make(server, timeout=5.0, concurrency=4)
    async with llm:
        stuck = asyncio.create_task(llm.answer(events(1, "stuck")))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        answers = await llm.answer(events(3, "next"))
        assert time.monotonic() - started < 1.0 and not stuck.done()
        assert [a.label for a in answers] == [1, 1, 1]
        await stuck


async def test_an_answer_outside_the_labels_is_not_retryable(server: FaultServer) -> None:
    server.script = ["ok:maybe"]
    llm = make(server, constrain="none", retries=0)
    async with llm:
        (wrong,) = await llm.answer(events(1, "a"))
        server.default = "500"
        (failed,) = await llm.answer(events(1, "b"))
    assert wrong.label is None and not wrong.retryable
    assert failed.label is None and failed.retryable


async def test_health_reports_the_breaker_hedges_and_timeouts(server: FaultServer) -> None:
    server.default = "500"
    llm = make(server, retries=0, breaker_failures=2, concurrency=1)
    async with llm:
        await llm.answer(events(3))
    health = llm.health()
    assert health["breaker_state"] == "open" and health["breaker_opened"] == 1
    assert health["breaker_rejections"] == 1 and health["failed"] == 3
    for key in ("requests", "retries", "hedges", "hedge_wins", "timeouts", "deadline_exceeded",
                "latency_p95_s"):
        assert key in health
    assert json.dumps(health)  # fit for a replay's JSON


async def test_retries_and_hedges_stay_within_the_budget(server: FaultServer) -> None:
    server.default = "500"
    llm = make(server, retries=3, retry_budget=0.2, concurrency=8)
    async with llm:
        answers = await llm.answer(events(100))
    assert all(a.label is None and a.retryable for a in answers)
    # One request per event, a fifth more for retries, the reserve, and a second's refill.
    assert len(server.seen) <= 100 * 1.2 + 10 + 2
    assert llm.health()["budget_refusals"] > 0
    assert any("retry budget spent" in (a.error or "") for a in answers)


async def test_an_event_waiting_out_a_retry_after_lets_others_ask(server: FaultServer) -> None:
    server.script = ["429:1"]
    llm = make(server, concurrency=1)
    finished: dict[str, float] = {}
    started = time.monotonic()

    async def ask(name: str) -> None:
        (answer,) = await llm.answer(events(1, name))
        assert answer.label == 1
        finished[name] = time.monotonic() - started

    async with llm:
        await asyncio.gather(ask("limited"), ask("next"))
    assert finished["next"] < 0.5 <= 0.95 <= finished["limited"]


async def test_the_request_timeout_is_fitted_to_the_servers_answers(server: FaultServer) -> None:
    llm = make(server, timeout=5.0, hedge=False)
    async with llm:
        assert llm.request_timeout() == 5.0  # nothing known yet: the configured limit
        await warm(llm)
        assert llm.request_timeout() < 0.5  # quick answers: a quarter second is plenty
        server.script = ["slow:3"]
        started = time.monotonic()
        (answer,) = await llm.answer(events(1, "hung"))
    assert answer.label == 1 and time.monotonic() - started < 1.5
    assert (llm.stats.timeouts, llm.stats.retries) == (1, 1)
    assert llm.health()["request_timeout_s"] <= 5.0


async def test_a_server_that_became_slower_gets_the_time_it_now_needs(
    server: FaultServer,
) -> None:
    llm = make(server, timeout=5.0, hedge=False, retries=6, deadline=8.0)
    async with llm:
        await warm(llm)
        server.default = "slow:0.8"  # every answer now takes 0.8 s
        (answer,) = await llm.answer(events(1, "slower"))
    # The first requests are cut early; as the server stays silent, the timeout grows with the
    # silence until a request is given the 0.8 s it needs.
    assert answer.label == 1 and 1 <= llm.stats.timeouts <= 5


async def test_a_fixed_timeout_when_asked(server: FaultServer) -> None:
    llm = make(server, timeout=0.6, timeout_fit=None, hedge=False)
    async with llm:
        await warm(llm)
        assert llm.request_timeout() == 0.6
        server.script = ["slow:0.4"]
        (answer,) = await llm.answer(events(1, "slow"))
    assert answer.label == 1 and llm.stats.timeouts == 0
