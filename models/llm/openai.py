"""A live LLM behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp,
Ollama, a hosted API), called with httpx on the caller's event loop.

One event's way through :meth:`OpenAIChatLLM.answer`::

    cache hit? ──yes──► answer
        │no
    same prompt already in flight? ──yes──► share its answer
        │no
    concurrency slot (semaphore) ──► breaker allows? ──no──► LLMUnavailableError
        │                               │yes
        │                        POST, within ``timeout`` ──► 200 + readable label ──► answer
        │                               │
        │            429 / 5xx / connection error / timeout / malformed body
        │                               │
        └──── sleep (exponential backoff with jitter, ``Retry-After`` as a floor) and try again,
              while attempts and the ``deadline`` last; then a clear failure

Every event ends as an :class:`LLMAnswer`: a label, or ``label=None`` with ``error`` naming the
failure (``LLMTimeoutError``, ``LLMUnavailableError``, ``LLMResponseError``, or an answer outside
the labels). Nothing raises out of :meth:`~OpenAIChatLLM.answer` but cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from streamcascade.errors import (
    ConfigurationError,
    LLMError,
    LLMResponseError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.llm.prompts import PromptTemplate, read_answer
from streamcascade.models.llm.resilience import CircuitBreaker, backoff_delay, parse_retry_after
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event

logger = logging.getLogger(__name__)

#: Generated tokens needed by each constraint mode: a bare word, or a small JSON object.
_DEFAULT_MAX_TOKENS = {"grammar": 8, "json_schema": 24, "none": 16}
_MASK = "**********"


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
    requests: int = 0
    retries: int = 0
    breaker_rejections: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spent: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


class _Retryable(Exception):
    """One failed attempt that may be tried again; ``error`` is what to report if it is the last."""

    def __init__(
        self, error: LLMError, *, retry_after: float | None = None, server_fault: bool = True
    ):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.server_fault = server_fault


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
        Requests in flight at once (also the size of the connection pool).
    timeout
        Seconds one attempt may take, from sending the request to reading the whole answer.
    retries
        Further attempts after a failed one (429, 5xx, connection error, timeout, unreadable body).
    backoff_base, backoff_max
        Exponential backoff with full jitter: retry ``k`` waits up to ``min(backoff_max,
        backoff_base * 2**k)`` seconds, and never less than the server's ``Retry-After``.
    max_retry_after
        A ``Retry-After`` longer than this ends the event's attempts at once rather than wait.
    deadline
        Seconds an event may spend in attempts and waits once it has a concurrency slot; by default
        ``timeout * (retries + 1) + backoff_max * retries``.
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
        concurrency: int = 8,
        timeout: float = 30.0,
        retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 30.0,
        deadline: float | None = None,
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
                backoff_base,
                backoff_max,
                max_retry_after,
                prompt_price_per_1k,
                completion_price_per_1k,
            )
            < 0
        ):
            raise ConfigurationError("backoff, Retry-After limit and prices must not be negative")
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
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.deadline = (
            deadline if deadline is not None else timeout * (retries + 1) + backoff_max * retries
        )
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
        self.stats = LLMStats()

    # -- public ---------------------------------------------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

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
            self._cache_put(key, result)
        elif result.raw is not None:
            self.stats.no_label += 1
        future.set_result(result)
        return result

    def _failure(self, error: LLMError) -> LLMAnswer:
        kind = type(error).__name__
        self.stats.failed += 1
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
        return LLMAnswer(label=None, cost=0.0, error=self._scrub(f"{kind}: {error}"))

    async def _call(self, state: _LoopState, system: str, user: str) -> LLMAnswer:
        async with state.slots:
            started = time.monotonic()
            attempt = 0
            while True:
                if not self._breaker.allow():
                    self.stats.breaker_rejections += 1
                    raise LLMUnavailableError(
                        f"circuit breaker open for {self._endpoint} after repeated failures; "
                        f"next trial in {self._breaker.retry_in():.1f}s"
                    )
                remaining = self.deadline - (time.monotonic() - started)
                sent_at = self._breaker.clock()
                try:
                    answer = await self._attempt(state, system, user, min(self.timeout, remaining))
                except _Retryable as failure:
                    if failure.server_fault:
                        self._breaker.record_failure(sent_at)
                    else:
                        self._breaker.release()
                    delay = self._next_delay(failure, attempt, started)
                    logger.debug(
                        "retry %d of %s in %.2fs: %s", attempt + 1, self._endpoint, delay, failure
                    )
                    self.stats.retries += 1
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    self._breaker.release()
                    raise
                self._breaker.record_success()
                return answer

    def _next_delay(self, failure: _Retryable, attempt: int, started: float) -> float:
        """Seconds to wait before the next attempt; raises the final error when none may follow."""
        error = failure.error
        if attempt >= self.retries:
            raise type(error)(f"{error} (after {attempt + 1} attempts)") from None
        if failure.retry_after is not None and failure.retry_after > self.max_retry_after:
            raise type(error)(
                f"{error}; the server asks to wait {failure.retry_after:.0f}s, longer than "
                f"max_retry_after={self.max_retry_after:.0f}s"
            ) from None
        delay = backoff_delay(
            attempt,
            base=self.backoff_base,
            cap=self.backoff_max,
            retry_after=failure.retry_after,
            rng=self._rng,
        )
        # Wait only if an attempt can still follow within the deadline; never hang past it.
        if time.monotonic() - started + delay >= self.deadline:
            raise type(error)(
                f"{error}; deadline of {self.deadline:.1f}s reached after {attempt + 1} attempts"
            ) from None
        return delay

    async def _post(self, state: _LoopState, body: dict[str, Any], limit: float) -> httpx.Response:
        self.stats.requests += 1
        try:
            async with asyncio.timeout(max(limit, 0.001)):
                return await state.client.post(self._endpoint, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable(
                LLMTimeoutError(f"no answer from {self._endpoint} within {limit:.1f}s")
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

    async def _attempt(self, state: _LoopState, system: str, user: str, limit: float) -> LLMAnswer:
        body = self._body(system, user)
        response = await self._post(state, body, limit)
        status = response.status_code
        if status == 400 and self._constraint:
            # The server may not know the constraint (response_format, grammar): ask it once
            # without, and keep to robust parsing if that works.
            plain = {k: v for k, v in body.items() if k not in self._constraint}
            retry = await self._post(state, plain, limit)
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

    def _read(self, response: httpx.Response) -> LLMAnswer:
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
        self._charge(payload.get("usage"))
        label = read_answer(self.task, content)
        if label is None:
            return LLMAnswer(
                label=None,
                cost=self.cost,
                error=self._scrub(
                    f"answer outside the labels {list(self.task.answer_words)}: {content[:120]!r}"
                ),
                raw=content,
            )
        return LLMAnswer(label=label, cost=self.cost, raw=content)

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
                    max_connections=self.concurrency, max_keepalive_connections=self.concurrency
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
