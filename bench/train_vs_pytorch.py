#!/usr/bin/env python3
"""Training speed: `moec-run train` vs PyTorch on the same model.

Both train the spec's model on Fashion-MNIST from the same initial weights
(`moec-run init`), with the spec's recipe (AdamW, batch = the spec's
train.batch, 128 for examples/vimoe-tiny-fmnist.json, label smoothing,
random crop + horizontal flip, router noise) on the same number of threads,
for --steps steps each, one run each. moec's rate is what `moec-run train`
logs (below); PyTorch's (bench/torch_train.py, float32, OpenBLAS,
OPENBLAS_CORETYPE unset, OMP_WAIT_POLICY=PASSIVE unless set) is measured
over the steps after its first 3. Both include the batch preparation
(augmentation, noise), forward, backward, clipping and the optimizer step.
Prints both and the ratio moec / PyTorch.

usage: python3 bench/train_vs_pytorch.py
           --bin build/bin [--spec examples/vimoe-tiny-fmnist.json]
           [--steps 200] [--threads 2] [--seed 0] [--data DIR] [--work DIR]
           [--moec-args '...'] [--skip-moec | --skip-torch]

The moec command is `moec-run train MODEL --weights INIT --max-steps N
--threads T --seed S --data DIR --log LOG.jsonl --log-every 10
--eval-every-epoch off` plus --moec-args. Its rate is computed from the
train records of LOG.jsonl (steps x batch / the summed step times that
moec-run reports), leaving out the first 10 steps as warm-up.

For a full-accuracy PyTorch run (test accuracy per epoch, 20 minutes):
`bench/torch_train.py --spec SPEC --minutes 20 --threads 2`.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_torch  # noqa: E402
moe_torch.ensure_torch_python(passive=True)
from moe_torch import torch  # noqa: E402
import torch_train  # noqa: E402
import moec_log  # noqa: E402

ROOT = os.path.dirname(HERE)


def run(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(shlex.quote(c) for c in cmd)} exited "
                 f"{p.returncode}\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout + p.stderr, time.perf_counter() - t0


moec_last10_loss = None


def moec_rate_from_log(path, batch):
    """images/s of `moec-run train --log` train records, leaving out the
    first interval (warm-up) when there are several; (rate, timed steps)."""
    recs = moec_log.train_records(path)
    if not recs:
        return None, 0
    global moec_last10_loss
    moec_last10_loss = recs[-1].get("loss")
    return moec_log.train_rate(recs, batch)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--spec", default=os.path.join(ROOT, "examples", "vimoe-tiny-fmnist.json"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="PyTorch's OpenBLAS threads (default: --threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--moec-args", default="", help="extra arguments of moec-run train")
    ap.add_argument("--log-every", type=int, default=10,
                    help="moec-run train --log-every (its first interval is warm-up)")
    ap.add_argument("--skip-moec", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    spec = moe_torch.parse_spec(args.spec)
    cfg = torch_train.train_settings(args.spec)
    data = args.data or spec["data"].get("path") or torch_train.FMNIST_DEFAULT
    work = args.work or tempfile.mkdtemp(prefix="moec-train-bench-")
    os.makedirs(work, exist_ok=True)
    moec = os.path.join(args.bin, "moec")
    moec_run = os.path.join(args.bin, "moec-run")
    model = os.path.join(work, "model.moec")
    init = os.path.join(work, "init.safetensors")
    B = cfg["batch"]
    run([moec, "compile", args.spec, "--batch", str(B), "-o", model])
    run([moec_run, "init", model, "-o", init, "--seed", str(args.seed)])
    print(f"spec {args.spec}: batch {B}, {args.steps} steps, {args.threads} threads, "
          f"optimizer {cfg['optimizer']}, label smoothing "
          f"{spec['label_smoothing']}, crop padding {cfg['crop_padding']}, flip "
          f"{cfg['horizontal_flip']}; load average {loadavg()}")

    moec_rate = torch_rate = None
    if not args.skip_moec:
        log_path = os.path.join(work, "moec-train.jsonl")
        if os.path.exists(log_path):
            os.remove(log_path)
        cmd = [moec_run, "train", model, "--weights", init, "--max-steps", str(args.steps),
               "--threads", str(args.threads), "--seed", str(args.seed), "--data", data,
               "--log", log_path, "--log-every", str(args.log_every),
               "--eval-every-epoch", "off"]
        cmd += shlex.split(args.moec_args)
        out, wall = run(cmd)
        moec_rate, timed = moec_rate_from_log(log_path, B)
        if moec_rate is None:
            sys.exit(f"FAIL: no train records with images_per_s in {log_path}:\n{out[-3000:]}")
        print(f"moec-run train: {moec_rate:.1f} images/s over {timed} timed steps "
              f"({wall:.1f} s wall, final test evaluation included), train loss "
              f"{moec_last10_loss:.4f} over the last {args.log_every} steps; load "
              f"average {loadavg()}")
    if not args.skip_torch:
        r = torch_train.train(args.spec, moe_torch.read_safetensors(init), data,
                              steps=args.steps, threads=args.threads, seed=args.seed,
                              log=None, blas_threads=args.blas_threads)
        torch_rate = r["images_per_s"]
        blas = args.threads if args.blas_threads is None else args.blas_threads
        print(f"PyTorch {torch.__version__} (omp {torch.get_num_threads()} x blas {blas} "
              f"threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}): "
              f"{torch_rate:.1f} images/s over {r['steps'] - 3} timed steps, train "
              f"loss {r['last10_loss']:.4f} over the last 10 steps; load average "
              f"{loadavg()}")
    if moec_rate and torch_rate:
        print(f"ratio moec / PyTorch: {moec_rate / torch_rate:.2f}x")
    print(json.dumps({"moec_images_per_s": moec_rate, "torch_images_per_s": torch_rate,
                      "ratio": moec_rate / torch_rate if moec_rate and torch_rate else None,
                      "steps": args.steps, "threads": args.threads, "batch": B}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
