#!/usr/bin/env python3
"""PyTorch eager training speed of a moec spec, for bench/gpu-check.sh.

Runs bench/torch_train.py's `train` (ViMoETrain of bench/moe_torch.py, the
spec's recipe: augmentation, router noise, AdamW, clipping, schedule) for
--steps steps on --device, once per --amp mode: `off` (float32) and `bf16`
(the whole step under torch.autocast(dtype=torch.bfloat16)). Each rate is
torch_train's: images over the summed step times after --warmup steps (each
step ends with a host read of its loss, so it is synchronized). Prints one
JSON line per mode and, with --json, writes {mode: summary}.

    python3 bench/gpu_check_torch_train.py --spec examples/vimoe-tiny-fmnist.json \\
        --data DIR --device cuda --steps 60 [--amp off,bf16] [--json OUT.json]
"""
import argparse
import contextlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_train  # noqa: E402  (re-executes under a Python with torch)
from torch_train import moe_torch, torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=os.path.join(os.path.dirname(HERE), "examples",
                                                   "vimoe-tiny-fmnist.json"))
    ap.add_argument("--data", default=None, help="Fashion-MNIST directory")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--amp", default="off,bf16", help="comma-separated: off, bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summaries here")
    a = ap.parse_args()
    modes = [m.strip() for m in a.amp.split(",") if m.strip()]
    for m in modes:
        if m not in ("off", "bf16"):
            sys.exit(f"error: --amp: unknown mode '{m}' (off, bf16)")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda: torch sees no CUDA device")
    spec = moe_torch.parse_spec(a.spec)
    data = a.data or spec["data"].get("path") or torch_train.FMNIST_DEFAULT
    device_type = a.device.split(":")[0]
    results = {}
    for mode in modes:
        weights = torch_train.init_weights(spec, a.seed)
        ctx = (torch.autocast(device_type, dtype=torch.bfloat16) if mode == "bf16"
               else contextlib.nullcontext())
        t0 = time.perf_counter()
        try:
            with ctx:
                r = torch_train.train(a.spec, weights, data, steps=a.steps,
                                      threads=a.threads, seed=a.seed,
                                      warmup_steps=a.warmup, log=None,
                                      device=a.device)
        except Exception as exc:  # report, go on with the other mode
            msg = f"{type(exc).__name__}: {exc}".strip()
            results[mode] = {"error": msg[:2000]}
            print(json.dumps({"amp": mode, "error": msg.splitlines()[0][:300]}), flush=True)
            continue
        summary = {k: v for k, v in r.items() if k not in ("model", "history")}
        summary["wall_s"] = round(time.perf_counter() - t0, 2)
        summary["batch"] = torch_train.train_settings(a.spec)["batch"]
        results[mode] = summary
        print(json.dumps({"amp": mode, **summary}), flush=True)
    info = {"torch": torch.__version__, "device": a.device, "steps": a.steps,
            "warmup": a.warmup, "results": results}
    if device_type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
