"""The executor behind an OpenAI-compatible HTTP server (`folovllm serve`).

protocol      request bodies in, response objects and stream chunks out (no HTTP)
async_engine  the engine thread: StepDriver steps, submit / abort commands, token events
app           the Starlette routes
prometheus    /metrics text
server        build the app over an LLMEngine; run uvicorn in the foreground or on a thread
cli           `folovllm serve`

starlette and uvicorn are the optional `serve` extra; only `app`, `server` and the command
itself need them.
"""
