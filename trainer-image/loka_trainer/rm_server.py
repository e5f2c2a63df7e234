"""``python -m loka_trainer.rm_server --model DIR|s3://... [--port 8000]``: a reward model served on CPU for tiny
models, speaking the part of vLLM's pooling API Loka's reward-model component uses (``POST /classify`` with
``messages`` or ``input``; ``GET /health``, ``GET /v1/models``). On GPUs serve the same checkpoint with
``vllm serve <dir> --runner pooling`` instead.

The checkpoint is an ``algorithm: rm`` run's (a ``*ForSequenceClassification`` Hugging Face folder); an s3:// URI is
downloaded first (the S3 credentials come from the standard AWS variables): a run's checkpoint
(``…/global_step_N``) is restored and verified against its manifest like any, other URIs are copied as they are.
``--stage-only DIR`` stages it into DIR and exits: the init container of the server the operator runs for a run's
``rewardModel.fromRun`` (the serving container, this server or vLLM, then reads DIR and holds no S3 credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("loka-rm-server")


class RewardModel:
    """The classifier and its tokenizer; one forward pass at a time (CPU)."""

    def __init__(self, folder: Path, name: str) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self._lock = threading.Lock()

    def text(self, messages: Sequence[dict[str, Any]]) -> str:
        if self.tokenizer.chat_template is not None:
            return str(self.tokenizer.apply_chat_template(list(messages), tokenize=False))
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)

    def logits(self, texts: Sequence[str]) -> list[float]:
        import torch

        with self._lock, torch.no_grad():
            scores = []
            for text in texts:  # one at a time: no padding side to get wrong
                encoded = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=2048)
                scores.append(float(self.model(**encoded).logits[0, -1]))
            return scores


def app(model: RewardModel) -> web.Application:
    async def classify(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "expected a JSON body"}}, status=400)
        if "messages" in body:
            texts = [model.text(body["messages"])]
        elif "input" in body:
            raw = body["input"]
            texts = [raw] if isinstance(raw, str) else [str(t) for t in raw]
        else:
            return web.json_response({"error": {"message": "expected messages or input"}}, status=400)
        logits = await asyncio.get_running_loop().run_in_executor(None, model.logits, texts)
        data = [{"index": i, "label": "LABEL_0", "probs": [value], "num_classes": 1} for i, value in enumerate(logits)]
        return web.json_response({"object": "list", "model": model.name, "data": data})

    async def health(request: web.Request) -> web.StreamResponse:
        del request
        return web.Response(text="ok")

    async def models(request: web.Request) -> web.StreamResponse:
        del request
        return web.json_response({"object": "list", "data": [{"id": model.name, "object": "model"}]})

    application = web.Application()
    application.router.add_post("/classify", classify)
    application.router.add_get("/health", health)
    application.router.add_get("/v1/models", models)
    return application


def stage(uri: str, dest: Path) -> Path:
    """The model at ``uri`` as a local folder: a local path as it is, an s3:// one downloaded into ``dest``."""
    if not uri.startswith("s3://"):
        return Path(uri)
    from loka_api.contract import STEP_FOLDER_PREFIX
    from loka_api.storage import ObjectStore, S3Uri

    store = ObjectStore()
    if uri.rstrip("/").rsplit("/", 1)[-1].startswith(STEP_FOLDER_PREFIX):
        from loka_trainer.source_model import stage_checkpoint_as_model

        return stage_checkpoint_as_model(uri.rstrip("/"), dest, store)
    store.download_prefix(S3Uri.parse(uri), dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help="a local folder or an s3:// checkpoint URI")
    parser.add_argument("--name", default="rm", help="the model name it answers to")
    parser.add_argument("--host", default="0.0.0.0")  # a server in a pod: every interface
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage-only", metavar="DIR", help="stage the model into DIR and exit (serve nothing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.stage_only:
        staged = stage(args.model, Path(args.stage_only))
        log.info("staged %s into %s", args.model, staged)
        return 0
    with tempfile.TemporaryDirectory(prefix="loka-rm-") as work:
        model = RewardModel(stage(args.model, Path(work) / "model"), args.name)
        log.info("serving %s on %s:%d", args.name, args.host, args.port)
        web.run_app(app(model), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
