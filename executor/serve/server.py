"""Putting the server together and running it on uvicorn, in the foreground (`folovllm serve`)
or on a background thread (tests, benchmarks: bound to 127.0.0.1 on a free port, stopped by
leaving the `with` block)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from executor.serve.app import Server
from executor.serve.async_engine import AsyncEngine
from executor.serve.protocol import ModelInfo
from traces.run_result import RunResult

# Idle keep-alive connections are kept this long (uvicorn's default is 5 s): a load generator
# that opened its connections up front should not find them closed between bursts.
KEEP_ALIVE_S = 75


def build_server(engine, *, model_name: str, max_waiting: int = 256, record: str | Path | None = None,
                 keep_timelines: bool = False) -> Server:
    """An app over `engine` (an LLMEngine, idle). With `record`, every request's server-side
    timeline is kept and written there as a run folder (requests.*, steps.*, summary.json)
    when the server stops."""
    async_engine = AsyncEngine(engine, max_waiting=max_waiting, keep_timelines=keep_timelines or record is not None)
    info = ModelInfo(name=model_name, max_model_len=engine.scheduler_config.max_model_len,
                     vocab_size=engine.config.vocab_size, tokenizer=engine.tokenizer)
    on_shutdown = (lambda e: write_record(e, record)) if record is not None else None
    return Server(async_engine, info, on_shutdown=on_shutdown)


def server_result(async_engine: AsyncEngine) -> RunResult:
    """The server's own timelines as a run result (what an in-process replay returns)."""
    return RunResult(recorder=async_engine.recorder, scheduler_config=async_engine.engine.scheduler_config,
                     stats=async_engine.driver.finish_stats(), engine="server")


def write_record(async_engine: AsyncEngine, out_dir: str | Path) -> Path:
    return server_result(async_engine).write(out_dir)


class ServerThread:
    """uvicorn on a background thread: `with ServerThread(server) as s: ... s.url ...`."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 30.0) -> None:
        import uvicorn

        self.server = server
        config = uvicorn.Config(server.app(), host=host, port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5,
                                timeout_keep_alive=KEEP_ALIVE_S)
        self._uvicorn = uvicorn.Server(config)
        self._uvicorn.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(target=self._uvicorn.run, name="folovllm-http", daemon=True)
        self._start_timeout = start_timeout
        self.url = ""

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        host, port = self._uvicorn.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the HTTP server did not stop within {timeout} s")
