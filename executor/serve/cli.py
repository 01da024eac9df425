"""`folovllm serve [MODEL]`: the executor as an OpenAI-compatible HTTP server.

Importable without the optional `serve` extra (starlette, uvicorn): the command says what to
install instead of failing on an import.
"""

from __future__ import annotations

from pathlib import Path

import click

from executor.cli import build_engine, engine_options

MISSING_EXTRA = "`folovllm serve` needs the optional 'serve' extra (starlette, uvicorn): pip install 'folovllm[serve]'"


def serve_extra_missing() -> str | None:
    """Why the server cannot run here, or None when it can."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    return f"{MISSING_EXTRA} (missing: {', '.join(missing)})" if missing else None


@click.command()
@click.argument("model", required=False, default=None)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 to serve a network).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--served-model-name", default=None, help="The name clients pass as `model` (default: MODEL).")
@click.option("--max-waiting", type=int, default=256, show_default=True,
              help="Bound of the waiting queue; a request beyond it is answered 429.")
@click.option("--record", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep every request's server-side timeline and write them here (requests.csv/parquet, "
                   "steps, summary.json) when the server stops.")
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
@click.option("--no-warmup", is_flag=True, help="Skip the warm-up batch before serving.")
@engine_options
def serve(model, host, port, served_model_name, max_waiting, record, threads, no_warmup, **opts) -> None:
    """Serve MODEL (default: the embedded smollm2-135m, or an HF directory) over HTTP with the
    OpenAI API: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics."""
    why = serve_extra_missing()
    if why:
        raise click.ClickException(why)
    if max_waiting < 1:
        raise click.ClickException(f"--max-waiting={max_waiting}: must be >= 1")
    import uvicorn

    from executor.serve.server import KEEP_ALIVE_S, build_server

    if model is not None:
        opts["model_name"] = model
    if threads:
        import torch

        torch.set_num_threads(threads)
    engine = build_engine(opts)
    if not no_warmup:
        engine.warmup()
    name = served_model_name or opts["model_name"]
    server = build_server(engine, model_name=name, max_waiting=max_waiting, record=record)
    click.echo(f"serving {name!r} ({engine.model_dir}) on http://{host}:{port}/v1 ; Ctrl-C stops"
               + (f"; timelines -> {record}" if record else ""), err=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
                timeout_keep_alive=KEEP_ALIVE_S)
    if record is not None:
        click.echo(f"server timelines written to {record}", err=True)
