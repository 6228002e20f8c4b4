"""A live LLM behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp,
Ollama, a hosted API), called with httpx on the caller's event loop.

One event's way through :meth:`OpenAIChatLLM.answer`::

    cache hit? ──yes──► answer
        │no
    same prompt already in flight? ──yes──► share its answer
        │no
    concurrency slot (semaphore) ──► breaker allows? ──no──► LLMUnavailableError
        │                               │yes
        │                 POST, cut after the request timeout ──► 200 + readable label ──► answer
        │                               │
        │      still out after the server's observed p95 latency? ──► a hedge: the same request
        │      again, beside the first; the first answer wins, the other request is cancelled
        │                               │
        │            429 / 5xx / connection error / timeout / malformed body
        │                               │
        └──── after a backoff (exponential with jitter, ``Retry-After`` as a floor) try again,
              while attempts, the retry budget and the event's ``deadline`` last; then a clear
              failure

The request timeout is fitted to the server's label answers: ``timeout_fit`` times the 99th
percentile of their recent latencies, never under a quarter second nor over ``timeout``, and never
under the time since the server last answered anything (a server that has become slower, rather
than one that hangs some requests, soon gets the time it now needs).

Retries and hedges draw on one budget, a share of the first requests (``retry_budget``): a server
that fails most requests gets about one request per event, not one per attempt, and events whose
requests failed end quickly with a clear failure rather than queue behind each other's retries.

The events of one call, and of calls made at the same time, are asked concurrently, up to
``concurrency`` events with requests out at once: an event that only waits for its next attempt
(a backoff, a ``Retry-After``) lets its slot go meanwhile, so that it does not hold up others.
An event has at most two requests out (the first and a hedge, or a request that is slow and the
retry of one that failed), so the server sees at most twice ``concurrency``.

Every event ends as an :class:`LLMAnswer`: a label, or ``label=None`` with ``error`` naming the
failure (``LLMTimeoutError``, ``LLMUnavailableError``, ``LLMResponseError``, or an answer outside
the labels) and ``retryable`` saying whether asking later may mend it. Nothing raises out of
:meth:`~OpenAIChatLLM.answer` but cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from pydantic import SecretStr

from streamcascade.models.errors import (
    ConfigurationError,
    LLMError,
    LLMResponseError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from streamcascade.models.llm.base import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, LLMAnswer
from streamcascade.models.llm.prompts import PromptTemplate, read_answer
from streamcascade.models.llm.resilience import (
    CircuitBreaker,
    LatencyWindow,
    RetryBudget,
    backoff_delay,
    parse_retry_after,
)
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event

logger = logging.getLogger(__name__)

#: Generated tokens needed by each constraint mode: a bare word, or a small JSON object.
_DEFAULT_MAX_TOKENS = {"grammar": 8, "json_schema": 24, "none": 16}
_MASK = "**********"
#: No request is cut sooner: a pause of the event loop or of the garbage collector must not pass
#: for a hung server.
_TIMEOUT_FLOOR_S = 0.25


def chat_completions_url(url: str) -> str:
    """The endpoint for a base URL given with or without ``/v1`` (or as the endpoint itself).

    >>> chat_completions_url("http://127.0.0.1:8080")
    'http://127.0.0.1:8080/v1/chat/completions'
    >>> chat_completions_url("http://127.0.0.1:8080/v1/")
    'http://127.0.0.1:8080/v1/chat/completions'
    """
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"the LLM URL must start with http:// or https://, got {url!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


@dataclass(slots=True)
class LLMStats:
    """Running totals of one client; read them, never write them."""

    events: int = 0
    answered: int = 0
    no_label: int = 0
    failed: int = 0
    cache_hits: int = 0
    shared_in_flight: int = 0
    #: Requests sent, hedges included.
    requests: int = 0
    retries: int = 0
    #: Hedges sent, and the answers that came from a hedge rather than the request it doubled.
    hedges: int = 0
    hedge_wins: int = 0
    #: Requests cut by the request timeout; requests cancelled because another one answered.
    timeouts: int = 0
    cancelled: int = 0
    #: Events given up when their deadline passed.
    deadline_exceeded: int = 0
    breaker_rejections: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spent: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


class _Retryable(Exception):
    """A failure that asking again may mend: one failed request (``error`` is what to report if it
    is the last), or an event's final failure of that kind."""

    def __init__(
        self, error: LLMError, *, retry_after: float | None = None, server_fault: bool = True
    ):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.server_fault = server_fault


@dataclass(frozen=True, slots=True)
class _Request:
    """One request of an event, out on the network."""

    sent: float  # time.monotonic() when it went out
    hedge: bool


#: The answer of one request, and the token usage the server reported for it.
_Reply = tuple[LLMAnswer, object]


class _Slot:
    """An event's hold on one of the client's concurrency slots."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self.held = False

    async def take(self) -> None:
        await self._slots.acquire()
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._slots.release()


@dataclass(slots=True)
class _LoopState:
    """What is bound to one event loop: the HTTP client, the semaphore, the in-flight prompts."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    slots: asyncio.Semaphore
    in_flight: dict[tuple[str, str], asyncio.Future[LLMAnswer]] = field(default_factory=dict)


class OpenAIChatLLM:
    """An :class:`~streamcascade.models.llm.base.LLMBackend` on an OpenAI-compatible server.

    Parameters
    ----------
    url
        Base URL of the server (``http://127.0.0.1:8080/v1``; ``/v1`` may be left out).
    model
        The model name the server knows.
    task
        The task: its question, labels and answer words.
    api_key
        Sent as a bearer token; held as a :class:`~pydantic.SecretStr` and never logged or shown.
    name
        The backend's name in decisions and metrics (default ``"openai:<model>"``).
    cost
        Cost of one answer in the paper's units (parameters relative to BERT-base), reported in
        every delivered answer's ``cost`` (cached ones too: the cache saves money and time, and a
        replay should compare routing policies, not cache luck); failures cost 0. The default,
        636, is the paper's Llama-2-70B, so a live model is routed like the recorded one.
    constrain
        ``"json_schema"`` (portable), ``"grammar"`` (llama.cpp only, fewest tokens) or ``"none"``.
        A server that rejects the constraint with HTTP 400 is asked again without it, and the
        client keeps to robust parsing from then on.
    max_tokens
        Tokens to generate; by default just enough for the constrained answer.
    temperature, seed
        Sampling; 0 makes answers repeatable, which is what the cache assumes.
    max_text_chars
        Longer event texts are cut to this length before they are sent.
    concurrency
        Events asked at once, across all concurrent calls; each may have a hedge or a retry out
        beside its first request, so the connection pool holds twice as many.
    timeout
        Seconds one request may take at most, from sending it to reading the whole answer. An
        answer is a label of a few tokens: a server silent for this long is stuck, and the request
        is cut. It is also the request timeout until the server's latency is known.
    timeout_fit
        Once it is known, a request is cut after this many times the 99th percentile of the
        server's recent answer latencies (within the bounds in the module's docstring); ``None``
        keeps to ``timeout``.
    retries
        Further attempts after a failed one (429, 5xx, connection error, timeout, unreadable body).
    backoff_base, backoff_max
        Exponential backoff with full jitter: retry ``k`` waits up to ``min(backoff_max,
        backoff_base * 2**k)`` seconds, and never less than the server's ``Retry-After``.
    max_retry_after
        A ``Retry-After`` longer than this ends the event's attempts at once rather than wait.
    deadline
        Seconds an event may spend in requests and waits once it has a concurrency slot, whatever
        the retries left; by default ``3 * timeout``.
    hedge, hedge_quantile
        Whether a request still out after the ``hedge_quantile`` quantile of the server's recent
        answer latencies gets a twin (once per event); until enough answers are seen, none does.
    retry_budget
        Retries and hedges, together, as a share of first requests, beyond a reserve of ten
        (refilled at one a second) for a quiet client; see
        :class:`~streamcascade.models.llm.resilience.RetryBudget`.
    breaker_failures, breaker_reset
        Consecutive server failures that open the circuit breaker, and seconds it stays open.
    cache_size
        Answers kept, least recently used first out, keyed by the prompt; 0 turns the cache off.
    prompt_price_per_1k, completion_price_per_1k
        Money per 1,000 tokens, applied to the server's ``usage``; the total is ``stats.spent``
        (money is not paper cost, so it is kept apart from the answers' ``cost``).
    """

    def __init__(
        self,
        url: str,
        model: str,
        task: Task,
        *,
        api_key: str | SecretStr | None = None,
        name: str | None = None,
        cost: float = 636.0,
        constrain: str = "json_schema",
        max_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        max_text_chars: int = 2000,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT_S,
        timeout_fit: float | None = 3.0,
        retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 30.0,
        deadline: float | None = None,
        hedge: bool = True,
        hedge_quantile: float = 0.95,
        retry_budget: float = 0.2,
        breaker_failures: int = 5,
        breaker_reset: float = 10.0,
        cache_size: int = 4096,
        prompt_price_per_1k: float = 0.0,
        completion_price_per_1k: float = 0.0,
    ) -> None:
        if concurrency < 1 or timeout <= 0:
            raise ConfigurationError(
                f"concurrency and timeout must be positive, got {concurrency}, {timeout}"
            )
        if retries < 0 or cache_size < 0:
            raise ConfigurationError(
                f"retries and cache_size must not be negative, got {retries}, {cache_size}"
            )
        if (
            min(
                retry_budget,
                backoff_base,
                backoff_max,
                max_retry_after,
                prompt_price_per_1k,
                completion_price_per_1k,
            )
            < 0
        ):
            raise ConfigurationError(
                "retry budget, backoff, Retry-After limit and prices must not be negative"
            )
        if (deadline is not None and deadline <= 0) or not 0.0 < hedge_quantile < 1.0 or (
            timeout_fit is not None and timeout_fit <= 0
        ):
            raise ConfigurationError(
                f"deadline and timeout_fit must be positive and hedge_quantile within (0, 1), "
                f"got {deadline}, {timeout_fit}, {hedge_quantile}"
            )
        self.url = url
        self.model = model
        self.task = task
        self.api_key = (
            api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        )
        self.name = name or f"openai:{model}"
        self.labels = task.labels
        self.cost = cost
        self.constrain = constrain
        self.max_tokens = (
            max_tokens if max_tokens is not None else _DEFAULT_MAX_TOKENS.get(constrain, 16)
        )
        self.temperature = temperature
        self.seed = seed
        self.max_text_chars = max_text_chars
        self.concurrency = concurrency
        self.timeout = timeout
        self.timeout_fit = timeout_fit
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.deadline = deadline if deadline is not None else 3.0 * timeout
        self.hedge = hedge
        self.hedge_quantile = hedge_quantile
        self.retry_budget = retry_budget
        self.breaker_failures = breaker_failures
        self.breaker_reset = breaker_reset
        self.cache_size = cache_size
        self.prompt_price_per_1k = prompt_price_per_1k
        self.completion_price_per_1k = completion_price_per_1k

        try:
            self._template = PromptTemplate(
                task, constrain=constrain, max_text_chars=max_text_chars
            )
            self._breaker = CircuitBreaker(breaker_failures, breaker_reset)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        self._endpoint = chat_completions_url(url)
        self._constraint = self._template.constraint()
        self._cache: OrderedDict[tuple[str, str], LLMAnswer] = OrderedDict()
        self._state: _LoopState | None = None
        self._rng = random.Random()
        self._latency = LatencyWindow()
        self._last_answer_at = -math.inf  # time.monotonic() of the server's last answer
        self._budget = RetryBudget(ratio=retry_budget)
        self.stats = LLMStats()

    # -- public ---------------------------------------------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    def health(self) -> dict[str, Any]:
        """How the server is doing, as plain figures for metrics and a replay's JSON."""
        s = self.stats
        return {
            "breaker_state": self._breaker.state,
            "breaker_opened": self._breaker.times_opened,
            "events": s.events,
            "answered": s.answered,
            "no_label": s.no_label,
            "failed": s.failed,
            "requests": s.requests,
            "retries": s.retries,
            "hedges": s.hedges,
            "hedge_wins": s.hedge_wins,
            "timeouts": s.timeouts,
            "cancelled": s.cancelled,
            "deadline_exceeded": s.deadline_exceeded,
            "breaker_rejections": s.breaker_rejections,
            "budget_refusals": self._budget.refused,
            "latency_p95_s": self._latency.quantile(0.95),
            "request_timeout_s": self.request_timeout(),
            "failures": dict(s.failures),
        }

    async def answer(self, events: Sequence[Event]) -> list[LLMAnswer]:
        """Answer every event, in order; a failure is an answer with ``label=None``, ``error``."""
        state = self._loop_state()
        if len(events) == 1:  # the operator's usual call: no task to create and schedule
            return [await self._answer_event(state, events[0])]
        return list(await asyncio.gather(*(self._answer_event(state, e) for e in events)))

    async def ask(self, text: str) -> LLMAnswer:
        """Answer one text (the ``streamcascade llm ask`` command)."""
        (result,) = await self.answer([Event(id="ask", text=text)])
        return result

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop's client."""
        state, self._state = self._state, None
        if state is not None and not state.loop.is_closed():
            await state.client.aclose()

    async def __aenter__(self) -> OpenAIChatLLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"OpenAIChatLLM(url={self.url!r}, model={self.model!r}, task={self.task.name!r}, "
            f"api_key={_MASK if self.api_key else None}, constrain={self.constrain!r}, "
            f"concurrency={self.concurrency}, timeout={self.timeout}, retries={self.retries})"
        )

    # -- one event ------------------------------------------------------------------------------

    async def _answer_event(self, state: _LoopState, event: Event) -> LLMAnswer:
        self.stats.events += 1
        system, user = (m["content"] for m in self._template.messages(event.text))
        key = (system, user)
        cached = self._cache_get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        shared = state.in_flight.get(key)
        if shared is not None:
            self.stats.shared_in_flight += 1
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not shared.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The event that owned the request was cancelled, not this one: ask on our own.
        future: asyncio.Future[LLMAnswer] = state.loop.create_future()
        state.in_flight[key] = future
        try:
            result = await self._call(state, system, user)
        except _Retryable as e:
            result = self._failure(e.error, retryable=True)
        except LLMError as e:
            result = self._failure(e)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:  # a bug must still end as an answer, never lose the event
            logger.exception("unexpected error while asking %s", self._endpoint)
            result = self._failure(LLMResponseError(f"unexpected {type(e).__name__}: {e}"))
        finally:
            state.in_flight.pop(key, None)
        if result.label is not None:
            self.stats.answered += 1
            self._cache_put(key, replace(result, cost=self.cost, calls=1))
        elif result.raw is not None:
            self.stats.no_label += 1
        future.set_result(result)
        return result

    def _failure(self, error: LLMError, *, retryable: bool = False) -> LLMAnswer:
        kind = type(error).__name__
        self.stats.failed += 1
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
        return LLMAnswer(
            label=None, cost=0.0, error=self._scrub(f"{kind}: {error}"), retryable=retryable
        )

    async def _call(self, state: _LoopState, system: str, user: str) -> LLMAnswer:
        slot = _Slot(state.slots)
        await slot.take()
        try:
            return await self._race(state, system, user, slot)
        finally:
            slot.give_back()

    async def _race(self, state: _LoopState, system: str, user: str, slot: _Slot) -> LLMAnswer:
        """Ask until an answer comes, or attempts or the deadline run out (see the module's
        picture); raises :class:`_Retryable` with the final error when none came. The deadline
        runs from the first request, through the waits for a slot again after a backoff."""
        started = time.monotonic()
        give_up_at = started + self.deadline
        out: dict[asyncio.Task[_Reply], _Request] = {}
        attempts = 0
        may_hedge = self.hedge
        hedged = False
        retry_at: float | None = started  # when the next attempt may go; None: none will
        final: LLMError | None = None
        try:
            while True:
                if retry_at is not None and len(out) < 2 and time.monotonic() >= retry_at:
                    retry_at = None
                    if self._breaker.allow():
                        out[self._send(state, system, user)] = _Request(time.monotonic(), False)
                        if attempts == 0:
                            self._budget.deposit()
                        attempts += 1
                    else:
                        self.stats.breaker_rejections += 1
                        final = LLMUnavailableError(
                            f"circuit breaker open for {self._endpoint} after repeated failures; "
                            f"next trial in {self._breaker.retry_in():.1f}s"
                        )
                if not out and retry_at is None:
                    assert final is not None
                    raise _Retryable(final)
                hedge_at = self._hedge_at(out, may_hedge, retry_at)
                wake = give_up_at
                if retry_at is not None and len(out) < 2:
                    wake = min(wake, retry_at)
                if hedge_at is not None:
                    wake = min(wake, hedge_at)
                pause = max(0.0, wake - time.monotonic())
                if out:
                    done, _ = await asyncio.wait(
                        out, timeout=pause, return_when=asyncio.FIRST_COMPLETED
                    )
                else:  # only a backoff to wait out: others may have the slot meanwhile
                    done = set()
                    slot.give_back()
                    await asyncio.sleep(pause)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, give_up_at - time.monotonic())):
                            await slot.take()
                for task in done:
                    request = out.pop(task)
                    try:
                        answer, usage = task.result()
                    except _Retryable as failure:
                        if retry_at is None:
                            nxt = self._next_attempt(failure, attempts, give_up_at)
                            if isinstance(nxt, LLMError):
                                final = nxt
                            else:
                                retry_at = nxt
                                self.stats.retries += 1
                        continue
                    return self._won(answer, usage, request, hedged)
                now = time.monotonic()
                if now >= give_up_at:
                    self.stats.deadline_exceeded += 1
                    raise _Retryable(
                        LLMTimeoutError(
                            f"no answer from {self._endpoint} within the event's deadline of "
                            f"{self.deadline:.1f}s ({attempts} attempts"
                            f"{', one hedged' if hedged else ''})"
                        )
                    )
                if hedge_at is not None and now >= hedge_at:
                    may_hedge = False  # once per event, whether or not it may go
                    if self._budget.withdraw() and self._breaker.allow():
                        out[self._send(state, system, user)] = _Request(now, True)
                        self.stats.hedges += 1
                        hedged = True
        finally:
            if out:  # overtaken, or the event was given up or cancelled
                for task in out:
                    task.cancel()
                await asyncio.wait(out)
                for task in out:
                    if task.cancelled():
                        self.stats.cancelled += 1
                    else:
                        task.exception()  # one that ended beside the winner: its verdict is in

    def _hedge_at(
        self, out: dict[asyncio.Task[_Reply], _Request], may_hedge: bool, retry_at: float | None
    ) -> float | None:
        """When the one request out gets its hedge; ``None`` if it gets none."""
        if not may_hedge or retry_at is not None or len(out) != 1:
            return None
        after = self._latency.quantile(self.hedge_quantile)
        if after is None:
            return None  # no answers seen yet: nothing says this request is late
        (request,) = out.values()
        return request.sent + after

    def request_timeout(self) -> float:
        """Seconds a request sent now may take (see the module's docstring)."""
        p99 = self._latency.quantile(0.99)
        if self.timeout_fit is None or p99 is None:
            return self.timeout
        silent = time.monotonic() - self._last_answer_at
        fitted = max(_TIMEOUT_FLOOR_S, self.timeout_fit * p99, silent)
        return min(self.timeout, fitted)

    def _won(self, answer: LLMAnswer, usage: object, request: _Request, hedged: bool) -> LLMAnswer:
        """The winning answer, charged for every request its event sent to the server: an
        overtaken request was read by the server too, so it costs what the winner did."""
        self._last_answer_at = time.monotonic()
        self._latency.add(self._last_answer_at - request.sent)
        if request.hedge:
            self.stats.hedge_wins += 1
        calls = 2 if hedged else 1
        for _ in range(calls):
            self._charge(usage)
        return replace(answer, cost=answer.cost * calls, calls=calls)

    def _send(self, state: _LoopState, system: str, user: str) -> asyncio.Task[_Reply]:
        return asyncio.create_task(self._request(state, system, user))

    async def _request(self, state: _LoopState, system: str, user: str) -> _Reply:
        """One request, and the breaker's verdict on it (``allow`` was asked before)."""
        sent_at = self._breaker.clock()
        try:
            reply = await self._attempt(state, system, user)
        except _Retryable as failure:
            if failure.server_fault:
                self._breaker.record_failure(sent_at)
            else:
                self._breaker.release()
            raise
        except BaseException:
            self._breaker.release()
            raise
        self._breaker.record_success()
        return reply

    def _next_attempt(
        self, failure: _Retryable, attempts: int, give_up_at: float
    ) -> float | LLMError:
        """When the next attempt may go after ``failure``, or the error to end with if none may."""
        error = failure.error
        if attempts > self.retries:
            return type(error)(f"{error} (after {attempts} attempts)")
        if failure.retry_after is not None and failure.retry_after > self.max_retry_after:
            return type(error)(
                f"{error}; the server asks to wait {failure.retry_after:.0f}s, longer than "
                f"max_retry_after={self.max_retry_after:.0f}s"
            )
        delay = backoff_delay(
            attempts - 1,
            base=self.backoff_base,
            cap=self.backoff_max,
            retry_after=failure.retry_after,
            rng=self._rng,
        )
        retry_at = time.monotonic() + delay
        # Wait only if an attempt can still follow within the deadline; never hang past it.
        if retry_at >= give_up_at:
            return type(error)(
                f"{error}; deadline of {self.deadline:.1f}s reached after {attempts} attempts"
            )
        if not self._budget.withdraw():
            return type(error)(f"{error}; retry budget spent (after {attempts} attempts)")
        logger.debug("retry %d of %s in %.2fs: %s", attempts, self._endpoint, delay, error)
        return retry_at

    async def _post(self, state: _LoopState, body: dict[str, Any]) -> httpx.Response:
        self.stats.requests += 1
        limit = self.request_timeout()
        try:
            async with asyncio.timeout(limit):
                return await state.client.post(self._endpoint, json=body)
        except (TimeoutError, httpx.TimeoutException):
            self.stats.timeouts += 1
            raise _Retryable(
                LLMTimeoutError(f"no answer from {self._endpoint} within {limit:.2f}s")
            ) from None
        except httpx.TransportError as e:
            raise _Retryable(
                LLMUnavailableError(f"cannot reach {self._endpoint}: {type(e).__name__}: {e}")
            ) from None

    def request_body(self, text: str) -> dict[str, Any]:
        """The JSON body this client sends to ask about ``text`` (benchmarks send it bare)."""
        system, user = (m["content"] for m in self._template.messages(text))
        return self._body(system, user)

    def _body(self, system: str, user: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **self._constraint,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    async def _attempt(self, state: _LoopState, system: str, user: str) -> _Reply:
        body = self._body(system, user)
        response = await self._post(state, body)
        status = response.status_code
        if status == 400 and self._constraint:
            # The server may not know the constraint (response_format, grammar): ask it once
            # without, and keep to robust parsing if that works.
            plain = {k: v for k, v in body.items() if k not in self._constraint}
            retry = await self._post(state, plain)
            if retry.status_code == 200:
                logger.warning(
                    "%s rejected constrain=%r (HTTP 400: %s); reading free answers from now on",
                    self._endpoint,
                    self.constrain,
                    self._quote(response.text),
                )
                self._constraint = {}
                response, status = retry, 200
            elif retry.status_code == 429 or retry.status_code >= 500:
                response, status = retry, retry.status_code  # a passing fault: retried below
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            error = LLMUnavailableError(
                f"HTTP {status} from {self._endpoint}: {self._quote(response.text)}"
            )
            raise _Retryable(error, retry_after=retry_after, server_fault=status != 429)
        if status != 200:
            raise LLMResponseError(
                f"HTTP {status} from {self._endpoint}: {self._quote(response.text)}"
            )
        return self._read(response)

    def _read(self, response: httpx.Response) -> _Reply:
        try:
            payload = json.loads(response.content)
            content = payload["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("message content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(
                LLMResponseError(
                    f"unreadable answer from {self._endpoint} ({type(e).__name__}): "
                    f"{self._quote(response.text)}"
                )
            ) from None
        usage = payload.get("usage")
        label = read_answer(self.task, content)
        if label is None:
            return LLMAnswer(
                label=None,
                cost=self.cost,
                error=self._scrub(
                    f"answer outside the labels {list(self.task.answer_words)}: {content[:120]!r}"
                ),
                raw=content,
            ), usage
        return LLMAnswer(label=label, cost=self.cost, raw=content), usage

    def _charge(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        try:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
        except (TypeError, ValueError, OverflowError):  # odd usage must not cost the answer
            logger.warning("unreadable token usage from %s: %.200r", self._endpoint, usage)
            return
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        spent = (
            prompt * self.prompt_price_per_1k + completion * self.completion_price_per_1k
        ) / 1000.0
        self.stats.spent += spent

    # -- plumbing -------------------------------------------------------------------------------

    def _loop_state(self) -> _LoopState:
        """The client and semaphore of the running loop (both are bound to the loop they serve)."""
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            headers = {"Accept": "application/json"}
            if self.api_key is not None:
                headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
            client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(
                    max_connections=2 * self.concurrency,
                    max_keepalive_connections=2 * self.concurrency,
                ),
            )
            self._state = _LoopState(
                loop=loop, client=client, slots=asyncio.Semaphore(self.concurrency)
            )
        return self._state

    def _cache_get(self, key: tuple[str, str]) -> LLMAnswer | None:
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
        return found

    def _cache_put(self, key: tuple[str, str], answer: LLMAnswer) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = answer
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _quote(self, text: str) -> str:
        """A server's words, short and with the API key masked, fit for an error or a log."""
        return _snippet(self._scrub(text))

    def _scrub(self, message: str) -> str:
        """``message`` with the API key masked, should a server ever echo it back."""
        if self.api_key is not None:
            secret = self.api_key.get_secret_value()
            if secret:
                message = message.replace(secret, _MASK)
        return message


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
