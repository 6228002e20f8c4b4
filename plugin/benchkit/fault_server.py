"""An OpenAI-compatible ``/v1/chat/completions`` endpoint on loopback that misbehaves on cue.

It stands in for an upstream LLM on a bad day, so that a benchmark or a test can show what the
stream does then. Requests are numbered as they arrive and request ``i`` gets the action
``script[i % len(script)]``:

``ok``
    A valid answer at once.
``slow``
    A valid answer after ``slow_seconds``.
``hang``
    Nothing at all: the connection stays open until the client gives up (or the server stops).
``429``
    HTTP 429 with ``Retry-After: <retry_after>``.
``500``
    HTTP 500.
``not-json``
    HTTP 200 whose body is not JSON (an HTML error page from a proxy).

:data:`HEALTHY` answers every request at once; :data:`FAULTY` cycles through the six behaviours
above. The answer's label word is the one ``answers`` maps the event's text to, else the first
word the request's constraint allows. :class:`FaultServer` runs its own event loop in a thread,
so that the caller's loop (a replay, a Kafka operator) is not the one serving it::

    with FaultServer(FAULTY) as server:
        llm = OpenAIChatLLM(server.url, "fault", TASKS["hatespeech"])

:class:`FaultServerProcess` runs the same server in a child process, as a real endpoint would be:
a benchmark's timings then hold no share of the server's work. ``python -m
streamcascade.benchkit.fault_server --mode faulty --port 8099`` serves one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

HEALTHY: tuple[str, ...] = ("ok",)
FAULTY: tuple[str, ...] = ("429", "500", "not-json", "hang", "slow", "ok")
MODES = {"healthy": HEALTHY, "faulty": FAULTY}
ACTIONS = frozenset(FAULTY)

_LOOPBACK = "127.0.0.1"
_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
_USER_TEXT = re.compile(r"^Text: ", re.MULTILINE)


class FaultServer:
    """A chat-completions endpoint that follows ``script``, one action per request.

    Parameters
    ----------
    script
        The actions, cycled in order of arrival (see the module docstring).
    answers
        Label word to answer for an event text (the user message without its ``Text:`` prefix);
        texts not in it get the first word the request's constraint allows.
    slow_seconds
        How long a ``slow`` answer takes.
    retry_after
        The ``Retry-After`` seconds of a ``429``.
    port
        Port on loopback; 0 picks a free one.
    """

    def __init__(
        self,
        script: Sequence[str] = HEALTHY,
        *,
        answers: Mapping[str, str] | None = None,
        slow_seconds: float = 2.5,
        retry_after: int = 1,
        port: int = 0,
    ) -> None:
        unknown = sorted(set(script) - ACTIONS)
        if not script or unknown:
            raise ValueError(f"script needs actions from {sorted(ACTIONS)}, got {list(script)}")
        self.script = tuple(script)
        self.answers = dict(answers or {})
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.port = port
        #: How often each action was served, and how many requests arrived.
        self.served: Counter[str] = Counter()
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The base URL a client is given (``/v1`` included)."""
        return f"http://{_LOOPBACK}:{self.port}/v1"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultServer:
        """Serve in a background thread; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("the fault server is already running")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"the fault server did not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving; hanging requests are dropped."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout=10.0)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultServer(script={self.script}, url={self.url!r})"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve_forever())
        except BaseException as e:  # reported to start(); the thread must not die silently
            self._error = e
            self._ready.set()

    async def _serve_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, _LOOPBACK, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for handler in list(self._handlers):
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    # -- one connection -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the client went away: nothing to answer
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read and answer one request; ``False`` when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0]
        if method != "POST" or not path.endswith("/chat/completions"):
            self._send(writer, 404, b'{"error": "not found"}')
            await writer.drain()
            return True
        action = self.script[self.requests % len(self.script)]
        self.requests += 1
        self.served[action] += 1
        if action == "hang":
            await reader.read()  # until the client closes the connection
            return False
        if action == "slow":
            await asyncio.sleep(self.slow_seconds)
        if action == "429":
            extra = {"Retry-After": str(self.retry_after)}
            self._send(writer, 429, b'{"error": "rate limited"}', extra)
        elif action == "500":
            self._send(writer, 500, b'{"error": "internal error"}')
        elif action == "not-json":
            page = b"<html><body>502 Bad Gateway</body></html>"
            self._send(writer, 200, page, {"Content-Type": "text/html"})
        else:
            self._send(writer, 200, json.dumps(self._completion(body)).encode())
        await writer.drain()
        return True

    def _completion(self, raw: bytes) -> dict[str, object]:
        request = json.loads(raw)
        messages = request.get("messages") or [{}]
        text = _USER_TEXT.sub("", str(messages[-1].get("content", "")), count=1)
        word = self.answers.get(text) or _first_allowed_word(request)
        content = json.dumps({"label": word}) if "response_format" in request else word
        return {
            "id": f"fault-{self.requests}",
            "object": "chat.completion",
            "model": request.get("model", "fault"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 80, "completion_tokens": 3, "total_tokens": 83},
        }

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        headers["Content-Length"] = str(len(payload))
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write((head + "\r\n").encode("latin-1") + payload)


def _first_allowed_word(request: Mapping[str, object]) -> str:
    """The first answer word a request's constraint allows (a grammar or a JSON-schema enum)."""
    grammar = request.get("grammar")
    if isinstance(grammar, str):
        words = re.findall(r'"([^"]*)"', grammar)
        if words:
            return str(words[0])
    try:
        fmt: object = request["response_format"]
        enum = fmt["json_schema"]["schema"]["properties"]["label"]["enum"]  # type: ignore[index]
        return str(enum[0])
    except (KeyError, TypeError, IndexError):
        return "yes"


class FaultServerProcess:
    """A :class:`FaultServer` in a child process (same parameters); ``url`` once started."""

    def __init__(
        self,
        script: Sequence[str] = HEALTHY,
        *,
        answers: Mapping[str, str] | None = None,
        slow_seconds: float = 2.5,
        retry_after: int = 1,
    ) -> None:
        FaultServer(script)  # the same checks, here rather than in the child
        self.script = tuple(script)
        self.answers = dict(answers or {})
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.url = ""
        self._process: subprocess.Popen[str] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> FaultServerProcess:
        self._folder = tempfile.TemporaryDirectory(prefix="streamcascade-faults-")
        answers = Path(self._folder.name) / "answers.json"
        answers.write_text(json.dumps(self.answers))
        command = [
            sys.executable, "-m", "streamcascade.benchkit.fault_server",
            f"--script={','.join(self.script)}", "--port=0", f"--answers={answers}",
            f"--slow-seconds={self.slow_seconds}", f"--retry-after={self.retry_after}",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # "serving ... at URL ...", or nothing if it died
        found = re.search(r"at (http://\S+)", line)
        if found is None:
            self.stop()
            raise RuntimeError(f"the fault server did not start: {line!r}")
        self.url = found.group(1)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
            if process.stdout is not None:
                process.stdout.close()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> FaultServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a misbehaving OpenAI-compatible endpoint.")
    parser.add_argument("--mode", choices=sorted(MODES), default="faulty")
    parser.add_argument("--script", help="Comma-separated actions, instead of --mode.")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--answers", help="A JSON file mapping event texts to answer words.")
    parser.add_argument("--slow-seconds", type=float, default=2.5)
    parser.add_argument("--retry-after", type=int, default=1)
    args = parser.parse_args(argv)
    script = args.script.split(",") if args.script else MODES[args.mode]
    answers = json.loads(Path(args.answers).read_text()) if args.answers else None
    server = FaultServer(
        script,
        answers=answers,
        slow_seconds=args.slow_seconds,
        retry_after=args.retry_after,
        port=args.port,
    )
    with server:
        print(f"serving {','.join(server.script)} at {server.url} (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
