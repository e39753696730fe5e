#!/usr/bin/env python3
"""moec on a busy machine: --threads 1 against --threads N, with and
without other processes keeping cores busy.

Users' machines run other work. With one core taken by another process, a
dispatch split over N threads waits for the thread that shares that core;
moec's thread pool notices and runs such calls on the calling thread alone
(docs/runtime.md, Execution). This measures whether N threads still run at
least as fast as one:

* inference: `moec-run infer --limit IMAGES` images/s (its throughput line);
* training: `moec-run train --max-steps STEPS` images/s from its log (the
  first 10 steps left out), evaluation off;

each with --threads 1 and --threads N, first on the idle machine, then with
--busy processes spinning (a plain busy loop each, started before and
stopped after each run), --rounds times in alternating order. Prints the
median images/s of each setting and the ratio N threads / 1 thread.

usage: python3 bench/busy_machine.py [--bin build/bin] [--spec SPEC]
           [--threads 2] [--busy 1] [--images 10000] [--steps 60]
           [--rounds 3] [--json OUT]
"""
import argparse
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import moec_log  # noqa: E402


def sh(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n"
                 f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def spin():
    while True:
        pass


def infer_rate(a, model, weights, threads):
    out = sh([os.path.join(a.bin, "moec-run"), "infer", model, "--weights", weights,
              "--limit", str(a.images), "--threads", str(threads)])
    return float(re.search(r"throughput: ([0-9.]+) images/s", out).group(1))


def train_rate(a, model, weights, threads, work, batch):
    log = os.path.join(work, f"train-{threads}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    sh([os.path.join(a.bin, "moec-run"), "train", model, "--weights", weights,
        "--max-steps", str(a.steps + 10), "--threads", str(threads),
        "--log", log, "--log-every", "10", "--eval-every-epoch", "off"])
    return moec_log.train_rate(moec_log.train_records(log), batch)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--spec", default=os.path.join(ROOT, "examples", "vimoe-tiny-fmnist.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy", type=int, default=1, help="busy processes")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    with open(a.spec) as f:
        batch = json.load(f).get("train", {}).get("batch", 128)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        model = os.path.join(work, "model.moec")
        weights = os.path.join(work, "init.safetensors")
        sh([os.path.join(a.bin, "moec"), "compile", a.spec, "-o", model, "--quiet"])
        sh([os.path.join(a.bin, "moec-run"), "init", model, "-o", weights])
        for busy in (0, a.busy):
            for r in range(a.rounds):
                order = (1, a.threads) if r % 2 == 0 else (a.threads, 1)
                for threads in order:
                    procs = [multiprocessing.Process(target=spin, daemon=True)
                             for _ in range(busy)]
                    for p in procs:
                        p.start()
                    try:
                        inf = infer_rate(a, model, weights, threads)
                        tr = train_rate(a, model, weights, threads, work, batch)
                    finally:
                        for p in procs:
                            p.terminate()
                            p.join()
                    for kind, v in (("infer", inf), ("train", tr)):
                        results.setdefault(f"{kind} busy={busy} threads={threads}",
                                           []).append(v)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{a.rounds} rounds, medians (images/s); busy = processes spinning\n")
    print(f"| busy processes | what | --threads 1 | --threads {a.threads} | ratio |")
    print("|---|---|---|---|---|")
    for busy in (0, a.busy):
        for kind in ("infer", "train"):
            one = med[f"{kind} busy={busy} threads=1"]
            many = med[f"{kind} busy={busy} threads={a.threads}"]
            print(f"| {busy} | {kind} | {one:.1f} | {many:.1f} | {many / one:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": results, "medians": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
