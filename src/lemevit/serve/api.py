"""The LitAPI of a trained lemevit model: each LitServe worker loads it as ``predict`` does and answers the
requests LitServe batches for it (see :mod:`lemevit.serve.answers`)."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

try:
    import litserve as ls
    from fastapi import Request
except ImportError as e:  # the serve extra; `lemevit serve` says so before it imports this module
    raise ImportError('lemevit.serve needs LitServe: pip install "lemevit[serve]"') from e

from lemevit.config.options import PredictOptions
from lemevit.engine.eval_predict import load_task
from lemevit.serve.answers import Request as ModelRequest
from lemevit.serve.answers import TaskAnswers, refusal
from lemevit.serve.http import PredictEndpoint, check_token

__all__ = ["ModelAPI"]

_log = logging.getLogger(__name__)


class ModelAPI(ls.LitAPI):
    """Serves ``options.checkpoint`` as ``answers`` say, through ``endpoint``. ``token``: the bearer token every
    request but ``GET /health`` must carry (None: none). ``threads``: PyTorch's CPU threads per worker."""

    def __init__(self, options: PredictOptions, answers: TaskAnswers, endpoint: PredictEndpoint, token: str | None,
                 threads: int, max_batch_size: int = 1, batch_timeout: float = 0.0):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, spec=endpoint)
        self.options, self.answers, self.token, self.threads = options, answers, token, threads

    def setup(self, device: str) -> None:
        if device == "cpu":
            torch.set_num_threads(self.threads)
        module = load_task(self.options.checkpoint)
        module.configure_inference(self.options)
        module.use_runtime(self.options.runtime, self.options.checkpoint)
        module.show_progress = False
        if self.options.runtime == "torch":
            module.to(device)
        self.answers.setup(module, self.options)

    def authorize(self, request: Request) -> None:
        """LitServe's auth hook, run before every endpoint: the token, except for the health check (probes of a
        load balancer or an orchestrator carry none)."""
        if request.url.path != "/health":
            check_token(request, self.token)

    def decode_request(self, request: dict) -> ModelRequest:
        return ModelRequest(**request)

    def predict(self, x: ModelRequest | list[ModelRequest]) -> dict | list[dict]:
        # A list when LitServe batches requests (its default batch and unbatch keep them as lists).
        batched = isinstance(x, list)
        requests = x if batched else [x]
        try:
            answers = self.answers.answer(requests)
        except Exception:  # noqa: BLE001 - a bug must cost its requests, never the worker
            _log.exception("lemevit serve: a batch of %d request(s) failed", len(requests))
            answers = [refusal(500, "the model failed on this request (the server's log has the reason)")] * \
                len(requests)
        return answers if batched else answers[0]

    def encode_response(self, output: dict) -> dict[str, Any]:
        return output


def cpu_threads(workers: int) -> int:
    """PyTorch threads per worker: ``OMP_NUM_THREADS`` when set, else this machine's cores shared by the
    ``workers``."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, len(os.sched_getaffinity(0)) // workers)
