"""``streamcascade bench llm-faults``: the stream against a healthy and a misbehaving LLM endpoint.

The same events (the first ``--events`` of the bundled HateSpeech sample) go through the cascade's
replay (:func:`streamcascade.models.replay.replay_async`, as ``streamcascade replay`` runs them),
with a live OpenAI-compatible client, twice for each way of handling an event the LLM cannot
answer: once against a healthy endpoint and once against one that, request by request, answers
429 with ``Retry-After: 1``, 500, a 200 whose body is not JSON, nothing at all, a valid answer
after 2.5 s, and a valid answer at once (:mod:`streamcascade.benchkit.fault_server`, in a child
process on loopback, as a real endpoint would be). Both endpoints answer the label the recorded
GPT-3.5 answer names, so that the cascade learns alike from both.

For each mode the JSON has ``healthy_events_per_s``, ``faulty_events_per_s``, their
``throughput_ratio``, ``unanswered`` (events of the faulty run that ended as dead letters),
``degraded`` (answered by an earlier stage instead of the LLM) and ``lost`` (events of any run
with no output and no dead letter, or with more than one: always 0); ``healthy`` and ``faulty``
hold each run's own figures, the LLM client's health report among them. With ``--rounds`` the
runs alternate healthy, faulty, healthy, ... so that a busy machine weighs on both alike.

The defaults fit the local endpoint, which answers a label in a few milliseconds: a request may
take a second at most (the client fits a shorter timeout to the answers it sees), and an event a
second in all. ``--events 300`` is short: the last events' deadline is a fixed cost against a
healthy run of a second or two.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from pathlib import Path
from typing import Any

import click

from streamcascade.benchkit.fault_server import FAULTY, HEALTHY, FaultServerProcess
from streamcascade.models import replay as rp
from streamcascade.models.cascade import LLM_FAILURE_MODES, CascadeConfig, build_cascade
from streamcascade.models.datasets import StreamRow, read_stream
from streamcascade.models.llm.openai import OpenAIChatLLM
from streamcascade.models.tasks import TASKS, Task

_DATASET = Path(__file__).resolve().parents[1] / "data" / "hatespeech.jsonl.gz"
_RECORDED = "gpt-3.5-turbo-1106"


def _answer_words(rows: list[StreamRow], task: Task) -> dict[str, str]:
    """The word the endpoints answer for each text: the recorded LLM's, where it names one."""
    words = {}
    for row in rows:
        index = task.parse_answer(row.llm.get(_RECORDED, ""))
        if index is not None:
            words[row.text] = task.answer_words[index]
    return words


async def _replay(
    rows: list[StreamRow], task: Task, url: str, mode: str, client: dict[str, Any],
    batch_size: int, in_flight: int,
) -> dict[str, Any]:
    llm = OpenAIChatLLM(url, "fault-server", task, **client)
    cascade = build_cascade(task, llm, CascadeConfig(on_llm_failure=mode))
    result = await rp.replay_async(rows, task, cascade, batch_size=batch_size,
                                   in_flight=in_flight, progress=False)
    return {
        "events_per_s": round(result["events_per_s"], 2),
        "seconds": round(result["seconds"], 3),
        "quality": round(result["quality"], 4),
        "llm_call_fraction": round(result["llm_call_fraction"], 4),
        "unanswered": result["unanswered"],
        "degraded": result["degraded"],
        "lost": result["lost"],
        "llm": llm.health(),
    }


def _run(
    rows: list[StreamRow], task: Task, mode: str, client: dict[str, Any], batch_size: int,
    in_flight: int, slow_seconds: float, rounds: int,
) -> dict[str, Any]:
    answers = _answer_words(rows, task)
    runs: dict[str, list[dict[str, Any]]] = {"healthy": [], "faulty": []}
    for _ in range(rounds):
        for name, script in (("healthy", HEALTHY), ("faulty", FAULTY)):
            with FaultServerProcess(script, answers=answers, slow_seconds=slow_seconds) as server:
                runs[name].append(asyncio.run(
                    _replay(rows, task, server.url, mode, client, batch_size, in_flight)))

    def rate(name: str) -> float:  # every round's events over every round's time
        return round(len(rows) * rounds / sum(r["seconds"] for r in runs[name]), 2)

    healthy, faulty = rate("healthy"), rate("faulty")
    return {
        "healthy_events_per_s": healthy,
        "faulty_events_per_s": faulty,
        "throughput_ratio": round(faulty / healthy, 4),
        "unanswered": sum(r["unanswered"] for r in runs["faulty"]),
        "degraded": sum(r["degraded"] for r in runs["faulty"]),
        "lost": sum(r["lost"] for name in runs for r in runs[name]),
        "healthy": runs["healthy"],
        "faulty": runs["faulty"],
    }


@click.command("llm-faults")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--events", default=300, show_default=True, help="Events of the HateSpeech sample.")
@click.option("--modes", default=",".join(LLM_FAILURE_MODES), show_default=True,
              help="What becomes of an event the LLM cannot answer, comma-separated.")
@click.option("--concurrency", default=32, show_default=True,
              help="Events the LLM client asks at once.")
@click.option("--timeout", "request_timeout", default=1.0, show_default=True,
              help="Seconds one LLM request may take at most (the client fits a shorter one to "
                   "the endpoint's answers).")
@click.option("--deadline", default=1.0, show_default=True,
              help="Seconds an event may spend asking the LLM.")
@click.option("--batch-size", default=8, show_default=True, help="Events per micro-batch.")
@click.option("--in-flight", default=32, show_default=True,
              help="Micro-batches answered at once.")
@click.option("--slow-seconds", default=2.5, show_default=True,
              help="How long the faulty endpoint's slow answer takes.")
@click.option("--rounds", default=1, show_default=True,
              help="Healthy and faulty runs per mode, alternating; rates are over all of them.")
def command(
    json_out: Path, events: int, modes: str, concurrency: int, request_timeout: float,
    deadline: float, batch_size: int, in_flight: int, slow_seconds: float, rounds: int,
) -> None:
    """Events/s of the replay against a healthy and a misbehaving LLM endpoint, per failure mode.

    Writes JSON with, for each mode, healthy_events_per_s, faulty_events_per_s,
    throughput_ratio, unanswered, degraded and lost.
    """
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(LLM_FAILURE_MODES))
    if not chosen or unknown:
        raise click.BadParameter(f"choose from {list(LLM_FAILURE_MODES)}", param_hint="--modes")
    if min(events, concurrency, batch_size, in_flight, rounds) < 1 or min(
            request_timeout, deadline) <= 0:
        raise click.BadParameter("counts and times must be positive")
    task = TASKS["hatespeech"]
    rows = read_stream(_DATASET, limit=events)
    client = {"concurrency": concurrency, "timeout": request_timeout, "deadline": deadline,
              "constrain": "grammar"}
    report: dict[str, Any] = {
        "events": len(rows),
        "task": task.name,
        "settings": {**client, "batch_size": batch_size, "in_flight": in_flight,
                     "slow_seconds": slow_seconds, "rounds": rounds},
        "faulty_script": list(FAULTY),
        "modes": {},
    }
    for mode in chosen:
        result = _run(rows, task, mode, client, batch_size, in_flight, slow_seconds, rounds)
        report["modes"][mode] = result
        click.echo(
            f"{mode:>11}: healthy {result['healthy_events_per_s']:.1f} ev/s, faulty "
            f"{result['faulty_events_per_s']:.1f} ev/s (x{result['throughput_ratio']}), "
            f"unanswered {result['unanswered']}, degraded {result['degraded']}, "
            f"lost {result['lost']}"
        )
    report["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": sys.argv,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"-> {json_out}")
