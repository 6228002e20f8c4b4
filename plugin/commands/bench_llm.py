"""``streamcascade bench llm``: the LLM client against a bare httpx loop, on a real server.

For each concurrency level the same number of requests goes out twice: once through
:class:`~streamcascade.models.llm.openai.OpenAIChatLLM` (prompt template, semaphore, breaker,
retries, parsing, cost accounting; its answer cache off) and once as bare
``httpx.AsyncClient.post`` calls that send the very same request bodies and only decode the JSON.
Both are driven alike: ``concurrency`` workers, each sending one request at a time, so latencies
are per request, not time spent queueing. Runs alternate (bare, client, bare, client, ...) so that
a busy machine hurts both alike, and every run has texts of its own so that the server's prompt
cache favours neither. ``overhead_vs_httpx`` is the client's total time over the bare loop's;
``cpu_overhead_vs_httpx`` the same for this process's CPU time, which the server's speed does not
blur.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import httpx
from tqdm import tqdm

from streamcascade.errors import StreamcascadeError
from streamcascade.llm_server import LocalLLMServer
from streamcascade.models.llm.openai import OpenAIChatLLM, chat_completions_url
from streamcascade.models.llm.prompts import CONSTRAIN_MODES
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event
from streamcascade.settings import Settings

# Short reviews of similar length, so that every request costs the server about the same.
_TEXTS = (
    "A warm, funny film with a cast that clearly enjoyed every scene.",
    "Dull plot, wooden acting and an ending that made no sense at all.",
    "I would watch this again tomorrow; the music alone is worth it.",
    "Two hours of my life I will never get back. Avoid this one.",
    "Clever script, sharp dialogue and a lead performance to remember.",
    "The effects were cheap and the story dragged from start to finish.",
    "A small gem: honest, moving and beautifully shot on a tiny budget.",
    "Loud, messy and boring; even the jokes fell flat every time.",
)


def _events(run: int, count: int) -> list[Event]:
    return [
        Event(f"{run}-{i}", f"Review {run}-{i}: {_TEXTS[i % len(_TEXTS)]}") for i in range(count)
    ]


def _summary(
    latencies: list[float], seconds: float, cpu_seconds: float, failures: int
) -> dict[str, float | int]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000.0

    return {
        "requests": len(latencies),
        "seconds": round(seconds, 4),
        "requests_per_s": round(len(latencies) / seconds, 3) if seconds > 0 else 0.0,
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000.0, 2),
        # CPU time of this process per request: what the client itself costs, free of the
        # server's (and a busy machine's) noise.
        "cpu_ms_per_request": round(cpu_seconds / len(latencies) * 1000.0, 3),
        "failures": failures,
    }


async def _closed_loop(
    items: list[Any], concurrency: int, send: Callable[[Any], Awaitable[bool]]
) -> tuple[list[float], float, float, int]:
    """``concurrency`` workers, each sending one item at a time: latencies exclude queueing."""
    queue = list(reversed(items))
    latencies: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while queue:
            item = queue.pop()
            started = time.perf_counter()
            ok = await send(item)
            latencies.append(time.perf_counter() - started)
            failures += not ok

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - wall, time.process_time() - cpu, failures


async def _run_client(
    llm: OpenAIChatLLM, events: list[Event], concurrency: int
) -> tuple[list[float], float, float, int]:
    async def send(event: Event) -> bool:
        (answer,) = await llm.answer([event])
        return answer.raw is not None  # the server answered (a wrong label is still an answer)

    return await _closed_loop(events, concurrency, send)


async def _run_bare(
    url: str, bodies: list[dict[str, Any]], concurrency: int, timeout: float,
    headers: dict[str, str],
) -> tuple[list[float], float, float, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:

        async def send(body: dict[str, Any]) -> bool:
            try:
                response = await client.post(url, json=body)
                return response.status_code == 200 and bool(response.json()["choices"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return False  # counted as a failure, as the client counts its own

        return await _closed_loop(bodies, concurrency, send)


async def _bench(
    url: str, model: str, levels: list[int], requests: int, rounds: int, constrain: str
) -> dict[str, Any]:
    endpoint = chat_completions_url(url)
    task = TASKS["imdb"]
    key = Settings().llm_api_key  # STREAMCASCADE_LLM_API_KEY, as the worker reads it
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    # Warm the server (model pages, prompt cache of the shared system prompt) before timing.
    warm = OpenAIChatLLM(url, model, task, constrain=constrain, cache_size=0, concurrency=4,
                         api_key=key)
    async with warm:
        answers = await warm.answer(_events(-1, 4))
    if all(a.raw is None for a in answers):
        raise StreamcascadeError(f"the LLM server at {url} gave no answer to the warm-up: "
                                 f"{answers[0].error}")
    results: list[dict[str, Any]] = []
    run = 0
    progress = tqdm(total=len(levels) * rounds * 2 * requests, desc="bench llm", unit="req")
    for concurrency in levels:
        llm = OpenAIChatLLM(
            url,
            model,
            task,
            constrain=constrain,
            concurrency=concurrency,
            cache_size=0,
            timeout=120.0,
            retries=0,
            hedge=False,  # the bare loop sends each request once: so does the client here
            api_key=key,
        )
        client_lat: list[float] = []
        bare_lat: list[float] = []
        client_s = bare_s = client_cpu = bare_cpu = 0.0
        client_fail = bare_fail = 0
        async with llm:
            for _ in range(rounds):
                run += 1
                bodies = [llm.request_body(e.text) for e in _events(run, requests)]
                lat, seconds, cpu, failed = await _run_bare(endpoint, bodies, concurrency, 120.0,
                                                            headers)
                bare_lat += lat
                bare_s += seconds
                bare_cpu += cpu
                bare_fail += failed
                progress.update(requests)
                run += 1
                lat, seconds, cpu, failed = await _run_client(
                    llm, _events(run, requests), concurrency
                )
                client_lat += lat
                client_s += seconds
                client_cpu += cpu
                client_fail += failed
                progress.update(requests)
        results.append(
            {
                "concurrency": concurrency,
                "client": _summary(client_lat, client_s, client_cpu, client_fail),
                "httpx": _summary(bare_lat, bare_s, bare_cpu, bare_fail),
                "overhead": round(client_s / bare_s, 4),
                "cpu_overhead": round(client_cpu / bare_cpu, 4) if bare_cpu > 0 else None,
                "client_stats": {
                    "prompt_tokens": llm.stats.prompt_tokens,
                    "completion_tokens": llm.stats.completion_tokens,
                    "retries": llm.stats.retries,
                    "answered": llm.stats.answered,
                    "no_label": llm.stats.no_label,
                },
            }
        )
    progress.close()
    client_total = sum(r["client"]["seconds"] for r in results)
    bare_total = sum(r["httpx"]["seconds"] for r in results)
    client_cpu = sum(r["client"]["cpu_ms_per_request"] for r in results)
    bare_cpu = sum(r["httpx"]["cpu_ms_per_request"] for r in results)
    return {
        "overhead_vs_httpx": round(client_total / bare_total, 4),
        "cpu_overhead_vs_httpx": round(client_cpu / bare_cpu, 4) if bare_cpu > 0 else None,
        "levels": results,
        "requests_per_level": requests * rounds,
        "rounds": rounds,
        "constrain": constrain,
        "url": endpoint,
        "model": model,
    }


@click.command("llm")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--concurrency",
    default="1,4,16",
    show_default=True,
    help="Concurrency levels, comma-separated.",
)
@click.option(
    "--requests",
    default=32,
    show_default=True,
    help="Requests per run; each level has 2 x rounds runs.",
)
@click.option("--rounds", default=2, show_default=True, help="Alternating bare/client rounds.")
@click.option(
    "--constrain",
    type=click.Choice(CONSTRAIN_MODES),
    default="grammar",
    show_default=True,
    help="How the answer is constrained (as `llm ask --constrain`).",
)
@click.option("--llm-url", default=None, help="Bench this server instead of a local one.")
@click.option("--llm-model", default=None, help="Its model name (with --llm-url).")
@click.option("--threads", default=2, show_default=True, help="Local server's CPU threads.")
@click.option("--parallel", default=4, show_default=True, help="Local server's slots.")
def command(
    json_out: Path,
    concurrency: str,
    requests: int,
    rounds: int,
    constrain: str,
    llm_url: str | None,
    llm_model: str | None,
    threads: int,
    parallel: int,
) -> None:
    """Requests/s and p50/p99 latency of the LLM client against a bare httpx loop.

    Starts the local LLM server unless --llm-url names one. Writes JSON with the top-level key
    overhead_vs_httpx (the client's time over the bare loop's; 1.0 is no overhead).
    """
    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers", param_hint="--concurrency") from None
    if not levels or min(levels) < 1 or requests < 1 or rounds < 1:
        raise click.BadParameter("levels, requests and rounds must be positive")
    server: LocalLLMServer | None = None
    try:
        if llm_url is None:
            server = LocalLLMServer(threads=threads, parallel=parallel).start()
            llm_url, llm_model = server.base_url, server.model
        if not llm_model:
            raise click.UsageError("--llm-url needs --llm-model")
        report = asyncio.run(_bench(llm_url, llm_model, levels, requests, rounds, constrain))
    except StreamcascadeError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if server is not None:
            server.stop()
    report["server"] = (
        {"kind": "local llama.cpp (xllamacpp)", "threads": threads, "parallel": parallel}
        if server is not None
        else {"kind": "external"}
    )
    report["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": sys.argv,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    for level in report["levels"]:
        c, h = level["client"], level["httpx"]
        click.echo(
            f"concurrency {level['concurrency']:>3}: client {c['requests_per_s']:.2f} req/s "
            f"p50 {c['p50_ms']:.0f} ms p99 {c['p99_ms']:.0f} ms | httpx {h['requests_per_s']:.2f} "
            f"req/s p50 {h['p50_ms']:.0f} ms p99 {h['p99_ms']:.0f} ms | x{level['overhead']}"
        )
    click.echo(
        f"overhead_vs_httpx {report['overhead_vs_httpx']} (CPU "
        f"{report['cpu_overhead_vs_httpx']}) -> {json_out}"
    )
