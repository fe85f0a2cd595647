"""Baseline servers for `loradock bench`: transformers + PEFT behind a minimal OpenAI-style chat endpoint.

Two modes, the two ways people serve many adapters without vLLM:

- ``naive``: one request at a time; switch the active adapter, decode, answer, next request.
- ``batched``: requests queue per adapter; the adapter with the oldest waiting request runs next, with all
  of its waiting requests (up to --max-batch) decoded together in one left-padded batch.

Both stream tokens as server-sent events, one chunk per decoded token, and honour ``max_tokens`` and the
vLLM ``ignore_eos`` extension, so the bench measures TTFT and inter-token latency the same way for every
server. Greedy decoding only (the bench sends temperature 0).

    python -m loradock.bench.peft_server --mode batched --port 8101 --adapter bench-00=adapters/bench-00
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from loradock.core.template import encode  # noqa: E402

DONE = object()


@dataclass
class Job:
    """One chat request: prompt ids in, token texts out through ``queue`` (DONE at the end)."""

    model: str
    ids: list[int]
    max_tokens: int
    ignore_eos: bool
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def emit(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class Decoder:
    """The model with every adapter loaded; greedy decoding of one adapter's batch with a KV cache."""

    def __init__(self, base: str, adapters: dict[str, str], dtype: torch.dtype, served_name: str | None) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        self.base_name = served_name or os.path.basename(os.path.normpath(base))
        names = list(adapters)
        if names:
            model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(adapters[name], adapter_name=name)
        self.model = model.eval()
        self.adapters = set(names)

    @torch.no_grad()
    def run(self, adapter: str | None, jobs: list[Job]) -> None:
        """Decode ``jobs`` together (left padding) with ``adapter`` active (None: the base model)."""
        if adapter is None and self.adapters:
            with self.model.disable_adapter():
                self._decode(jobs)
            return
        if adapter is not None:
            self.model.set_adapter(adapter)
        self._decode(jobs)

    def _decode(self, jobs: list[Job]) -> None:
        width = max(len(j.ids) for j in jobs)
        pad = self.tok.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        live = [True] * len(jobs)
        past = None
        for step in range(max(j.max_tokens for j in jobs)):
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
            for i, job in enumerate(jobs):
                if not live[i]:
                    continue
                token = int(nxt[i])
                eos = token == self.tok.eos_token_id and not job.ignore_eos
                if not eos:
                    job.emit(self.tok.decode([token]))
                if eos or step + 1 >= job.max_tokens:
                    live[i] = False
                    job.emit(DONE)
            if not any(live):
                break
            ids = nxt.unsqueeze(-1)
            mask = torch.cat([mask, torch.ones(len(jobs), 1, dtype=mask.dtype)], dim=-1)
            positions = positions[:, -1:] + 1


class Scheduler(threading.Thread):
    """Runs jobs on the decoder: one at a time (naive) or one adapter's queue at a time (batched)."""

    def __init__(self, decoder: Decoder, batched: bool, max_batch: int) -> None:
        super().__init__(daemon=True)
        self.decoder, self.batched, self.max_batch = decoder, batched, max_batch
        self.pending: deque[Job] = deque()
        self.cv = threading.Condition()

    def submit(self, job: Job) -> None:
        with self.cv:
            self.pending.append(job)
            self.cv.notify()

    def _take(self) -> list[Job]:
        with self.cv:
            while not self.pending:
                self.cv.wait()
            first = self.pending.popleft()
            if not self.batched:
                return [first]
            batch = [first]
            for job in list(self.pending):
                if job.model == first.model and len(batch) < self.max_batch:
                    self.pending.remove(job)
                    batch.append(job)
            return batch

    def run(self) -> None:
        while True:
            batch = self._take()
            adapter = batch[0].model if batch[0].model in self.decoder.adapters else None
            try:
                self.decoder.run(adapter, batch)
            except Exception as e:  # report to the clients, keep serving
                for job in batch:
                    job.emit(e)


def create_app(decoder: Decoder, scheduler: Scheduler) -> FastAPI:
    app = FastAPI()
    models = [decoder.base_name, *sorted(decoder.adapters)]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "peft"} for m in models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):  # noqa: ANN202 - streaming or JSON
        body = await request.json()
        model = body.get("model", decoder.base_name)
        if model not in models:
            msg = {"message": f"model {model!r} not found", "type": "not_found", "param": "model", "code": 404}
            return JSONResponse({"error": msg}, status_code=404)
        ids = encode(decoder.tok, body["messages"], add_generation_prompt=True)
        job = Job(
            model, ids, int(body.get("max_tokens") or 64), bool(body.get("ignore_eos")), asyncio.get_running_loop()
        )
        scheduler.submit(job)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> str:
            data = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        async def tokens():
            while (item := await job.queue.get()) is not DONE:
                if isinstance(item, Exception):
                    raise item
                yield item

        if body.get("stream"):

            async def sse():
                yield chunk({"role": "assistant", "content": ""})
                n = 0
                async for text in tokens():
                    n += 1
                    yield chunk({"content": text})
                yield chunk({}, "length")
                usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
                yield f"data: {json.dumps({'id': rid, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        texts = [t async for t in tokens()]
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(texts), "total_tokens": len(ids) + len(texts)}
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "usage": usage,
            "choices": [
                {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "".join(texts)}}
            ],
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description="transformers + PEFT baseline server for `loradock bench`.")
    ap.add_argument("--mode", choices=("naive", "batched"), required=True)
    ap.add_argument("--base-model", default="models/SmolLM2-135M-Instruct")
    ap.add_argument("--served-name", default=None, help="model id of the base (default: folder name)")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="repeatable")
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--max-batch", type=int, default=32, help="batched mode: most requests in one batch")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float32"),
        help="default: float32 for naive, bfloat16 for batched (the faster of the two on CPU for each)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: every core this process may use, as vLLM does)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float32" if args.mode == "naive" else "bfloat16")
    adapters = dict(a.split("=", 1) for a in args.adapter)
    decoder = Decoder(args.base_model, adapters, getattr(torch, dtype), args.served_name)
    scheduler = Scheduler(decoder, args.mode == "batched", args.max_batch)
    scheduler.start()
    uvicorn.run(create_app(decoder, scheduler), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
