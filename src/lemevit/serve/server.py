"""``lemevit serve``: a trained model behind LitServe, with the model card, the bounds and the shutdown a service
needs."""
from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from lemevit.errors import ConfigError, LemevitError
from lemevit.io.checkpoint import trained_model_task
from lemevit.tasks import get_task

__all__ = ["ServeOptions", "model_card", "serve"]

_HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServe binds


@dataclass
class ServeOptions:
    """How ``lemevit serve`` serves ``checkpoint`` (a run's checkpoint or a model file folder); the fields are its
    options."""

    checkpoint: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 1
    batch_timeout: float = 0.0
    token: str | None = None
    max_body_mb: float = 64.0
    timeout: float = 60.0
    runtime: str = "torch"
    accelerator: str = "auto"
    devices: int | str = "auto"
    allow_urls: bool = False

    def __post_init__(self):
        if self.host not in _HOSTS:
            raise ConfigError("host", f"LitServe binds {', '.join(_HOSTS)}; got {self.host}")
        if not 1024 <= self.port <= 65535:
            raise ConfigError("port", f"must be 1024..65535, got {self.port}")
        for name in ("workers", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if self.batch_timeout < 0 or self.batch_timeout >= self.timeout:
            raise ConfigError("batch_timeout", f"must be 0 or more and less than the timeout ({self.timeout} s), got "
                                               f"{self.batch_timeout}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("token", "is empty")


def model_card(module, task: str, answers, options, serve: ServeOptions) -> dict:
    """What ``GET /info`` says of the model: its task, classes, bands, input size and window, how it runs, and
    what ``POST /predict`` takes and answers."""
    hp = module.hparams
    return {"task": task, "description": get_task(task).description, "checkpoint": Path(serve.checkpoint).name,
            "architecture": hp.get("model"), "classes": module.label_names(), "bands": hp.get("in_chans"),
            "input_dtype": hp.get("input_dtype"), "img_size": hp.get("img_size"),
            "window": getattr(module, "window", None), "stride": getattr(module, "stride", None),
            "runtime": options.runtime, "parts": list(answers.parts), "answers": list(answers.media_types),
            "max_batch_size": serve.max_batch_size, "max_body_bytes": int(serve.max_body_mb * 2 ** 20),
            "timeout_s": serve.timeout, "urls": serve.allow_urls}


def serve(options: ServeOptions) -> int:
    """Serve ``options.checkpoint`` until SIGTERM (or Ctrl+C): requests in flight are answered, then every worker
    stops; returns 0."""
    try:
        import litserve as ls
    except ImportError:
        raise LemevitError('lemevit serve needs LitServe: pip install "lemevit[serve]"') from None
    from fastapi.exceptions import HTTPException
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from lemevit.engine.eval_predict import load_task
    from lemevit.serve.answers import answers_for
    from lemevit.serve.api import ModelAPI, cpu_threads
    from lemevit.serve.http import PredictEndpoint, error_response

    task = trained_model_task(options.checkpoint)
    answers = answers_for(task)
    accelerator = {"gpu": "cuda"}.get(options.accelerator, options.accelerator)
    predict_options = answers.predict_options(get_task(task), checkpoint=str(options.checkpoint),
                                              runtime=options.runtime, accelerator=options.accelerator)
    module = load_task(options.checkpoint)
    module.configure_inference(predict_options)
    # The ONNX export is made here, once, before the workers look for it.
    module.use_runtime(predict_options.runtime, options.checkpoint)
    card = model_card(module, task, answers, predict_options, options)
    del module
    if predict_options.accelerator == "cpu":  # onnxruntime runs on the CPU
        accelerator = "cpu"
    max_body = int(options.max_body_mb * 2 ** 20)
    endpoint = PredictEndpoint(answers, max_body, options.timeout, options.allow_urls)
    api = ModelAPI(predict_options, answers, endpoint, options.token, cpu_threads(options.workers),
                   max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout)
    # restart_workers: a worker that dies (out of memory, say) is replaced and its requests answered 500, rather
    # than the server stopping. max_payload_size: LitServe counts the body as it arrives (413 past the bound).
    server = ls.LitServer(api, accelerator=accelerator, devices=options.devices, workers_per_device=options.workers,
                          timeout=options.timeout, model_metadata=card, max_payload_size=max_body,
                          restart_workers=True, disable_openapi_url=True)
    # On SIGTERM the HTTP server waits this long for the requests in flight (LitServe's default: 30 s).
    server.uvicorn_graceful_timeout = options.timeout

    async def one_line(request, error: StarletteHTTPException):
        if error.status_code == 413:
            return error_response(413, f"the body is more than the server's --max-body-mb ({max_body:,} bytes)")
        response = error_response(error.status_code, error.detail)
        response.headers.update(error.headers or {})
        return response

    async def failed(request, error: Exception):
        return error_response(500, "the server failed on this request (its log has the reason)")

    for kind in (HTTPException, StarletteHTTPException):
        server.app.add_exception_handler(kind, one_line)
    server.app.add_exception_handler(Exception, failed)

    def drain(signum, frame) -> None:
        # LitServer.run waits on this event and then stops its HTTP servers, which answer the requests in flight
        # first, then its workers. Set from another thread: the main thread is inside a call on the event's proxy.
        event = server._shutdown_event
        if event is None:  # still loading: nothing is in flight
            raise SystemExit(0)
        threading.Thread(target=event.set, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, drain)
    try:
        print(f"lemevit serve: a {task} model ({card['architecture']}, {options.runtime}) on "
              f"http://{'[::]' if options.host == '::' else options.host}:{options.port} (POST /predict, GET /info, "
              "GET /health)", flush=True)
        server.run(host=options.host, port=options.port, num_api_servers=1, generate_client_file=False,
                   log_level="warning")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
