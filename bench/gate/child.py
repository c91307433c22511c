"""The perf gate's measuring process: `python -m seqbench.gate.child CONFIG_JSON`.

It imports the seqbench it finds (the tree under test: an A/B job runs one child per tree, each
with its own installed copy on PYTHONPATH), builds the training step of each point
(seqbench.measure.point.Harness) and answers the parent's commands, one JSON line each on stdin:
calibrate, time (a point, optionally followed by a calibration), facts (memory of a point), quit.
Replies are JSON lines on stdout prefixed with MARK, so anything else the tree's code prints is
skipped. A point's failure is its reply (status oom or error), never a crash.
"""
from __future__ import annotations

import json
import os
import sys

import torch

import seqbench
from seqbench.gate.perfrun import MARK
from seqbench.measure.point import Harness, MeasurePoint
from seqbench.measure.timing import time_blocks


def calibrate(device: str = "cpu", blocks: int = 5, min_block_s: float = 0.05) -> dict:
    """This machine's speed on two fixed kernels, independent of the code under test: a 256x256
    fp32 matmul and an LSTM(32 -> 64) forward + backward on a (16, 32, 32) batch. Seconds per
    call: medians and the per-block samples."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen).to(device)
    b = torch.randn(256, 256, generator=gen).to(device)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(32, 64, batch_first=True).to(device)
    x = torch.randn(16, 32, 32, generator=gen).to(device)

    def lstm_step():
        out, _ = lstm(x)
        out.sum().backward()

    mm = time_blocks(lambda: a @ b, device, blocks=blocks, min_block_s=min_block_s)
    ls = time_blocks(lstm_step, device, blocks=blocks, min_block_s=min_block_s)
    return {"matmul_s": mm.median, "lstm_step_s": ls.median,
            "matmul_samples": list(mm.samples), "lstm_step_samples": list(ls.samples)}


def train_closure(harness: Harness, factor: float):
    """The timed training step of a point. TEST-ONLY: factor > 1 (SEQBENCH_TEST_SLOWDOWN) makes
    it that many times slower with more of the same work: (factor - 1) extra training steps per
    call on average (a carried fraction, so 1.5 adds a step every second call). Extra steps are
    used rather than sleeping or spinning, which make the next real step slower too (cold caches,
    clock changes) and so overshoot the factor."""
    if factor == 1.0:
        return harness.train_step
    debt = [0.0]

    def slowed_train_step():  # TEST-ONLY
        harness.train_step()
        debt[0] += factor - 1.0
        while debt[0] >= 1.0 - 1e-9:
            harness.train_step()
            debt[0] -= 1.0

    return slowed_train_step


def facts(h: Harness) -> dict:
    """Sizes and memory of a point: saved-for-backward bytes, and CUDA peaks on a GPU."""
    from seqbench.measure.memory import cuda_peak, saved_bytes

    out = {"seq_len": h.seq_len, "params_actual": sum(p.numel() for p in h.model.parameters())}
    h.opt.zero_grad(set_to_none=True)
    out["saved_bytes"] = saved_bytes(h.forward_backward, list(h.model.parameters()))
    h.opt.zero_grad(set_to_none=True)
    if torch.device(h.point.device).type == "cuda":
        out["train_peak_allocated"], out["train_peak_reserved"] = cuda_peak(h.train_step, "cuda")
    return out


def send(obj: dict) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(cfg: dict) -> None:
    torch.set_num_threads(cfg["threads"])
    harnesses = {}

    def harness(i: int):
        if i not in harnesses:
            h = Harness(MeasurePoint.from_dict(cfg["points"][i]))
            h.train_step()  # the optimiser state exists from here on
            harnesses[i] = (h, train_closure(h, cfg["slowdown"].get(h.point.model, 1.0)))
        return harnesses[i]

    send({"ok": True, "seqbench_file": os.path.abspath(seqbench.__file__),
          "torch": torch.__version__})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "quit":
                break
            if cmd["op"] == "calibrate":
                send({"ok": True, **calibrate(cfg["device"], cmd["blocks"],
                                              cmd["cal_min_block_s"])})
            elif cmd["op"] == "time":
                h, step = harness(cmd["i"])
                t = time_blocks(step, h.point.device, blocks=cmd["blocks"],
                                min_block_s=cmd["min_block_s"])
                after = (calibrate(cfg["device"], cmd["blocks"], cmd["cal_min_block_s"])
                         if cmd["calibrate"] else None)
                send({"ok": True, "samples": list(t.samples), "calls_per_block": t.calls_per_block,
                      "calibration": after})
            elif cmd["op"] == "facts":
                send({"ok": True, **facts(harness(cmd["i"])[0])})
        except Exception as exc:  # noqa: BLE001 - the point's failure is its result
            oom = "out of memory" in str(exc) or isinstance(exc, torch.OutOfMemoryError)
            send({"ok": False, "status": "oom" if oom else "error",
                  "error": f"{type(exc).__name__}: {exc}"[:2000]})


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
