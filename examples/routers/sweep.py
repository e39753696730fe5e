#!/usr/bin/env python3
"""Trains every router of examples/routers/ on Fashion-MNIST for the same
budget, over several seeds, and writes the comparison as Markdown and CSV.

For each spec (default: every examples/routers/*.json): `moec compile` once,
then `moec-run train --epochs N --seed S` for each seed, the same thread
count for all. Per router the table gives the final test accuracy (mean and
the spread over the seeds: min-max and the sample standard deviation), the
active parameters and FLOPs per image (`moec-run inspect`), and the
training images/s (median over the seeds, from the training log, the
warm-up interval left out).

usage: python3 examples/routers/sweep.py [--bin build/bin] [--epochs 10]
           [--seeds 0,1,2] [--threads 2] [--only NAME,NAME] [--out DIR]
Writes DIR/routers.md and DIR/routers.csv (default DIR: build/routers) and
keeps each run's log and console output there; a run already finished in
DIR (its output file ends with the test accuracy) is not run again. Files
are named after the spec and a hash of its text, so an edited spec is
compiled and trained afresh; a model older than the `moec` binary is
recompiled, and runs older than their model are run again.
"""
import argparse
import csv
import glob
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import moec_log  # noqa: E402


def run(cmd, out_path=None):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if out_path:
        with open(out_path, "w") as f:
            f.write(p.stdout + p.stderr)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n"
                 f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def inspect(bin_dir, model):
    text = run([os.path.join(bin_dir, "moec-run"), "inspect", model])
    active = int(re.search(r"active params per image:\s+(\d+)", text).group(1))
    params = int(re.search(r"param count:\s+(\d+)", text).group(1))
    flops = int(re.search(r"FLOPs per image:\s+(\d+)", text).group(1))
    return params, active, flops


def newer(a, b):
    """Whether file a was modified after file b."""
    return os.path.getmtime(a) > os.path.getmtime(b)


def accuracy_of(text):
    m = re.search(r"test accuracy: ([0-9.]+)%", text)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "routers"))
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s != ""]
    if not seeds or a.epochs < 1 or a.threads < 1:
        sys.exit("usage: --epochs >= 1, --threads >= 1, at least one seed")
    specs = sorted(glob.glob(os.path.join(HERE, "*.json")))
    if a.only:
        wanted = a.only.split(",")
        specs = [s for s in specs
                 if os.path.splitext(os.path.basename(s))[0] in wanted]
        if len(specs) != len(wanted):
            sys.exit(f"FAIL: --only names a spec that is not in {HERE}")
    os.makedirs(a.out, exist_ok=True)

    rows = []
    for spec in specs:
        name = os.path.splitext(os.path.basename(spec))[0]
        with open(spec, "rb") as f:
            text = f.read()
        batch = json.loads(text)["train"]["batch"]
        key = f"{name}.{hashlib.sha256(text).hexdigest()[:10]}"
        model = os.path.join(a.out, key + ".moec")
        moec = os.path.join(a.bin, "moec")
        if not os.path.exists(model) or newer(moec, model):
            run([moec, "compile", spec, "--quiet", "-o", model])
        params, active, flops = inspect(a.bin, model)
        accs, rates = [], []
        for seed in seeds:
            stem = os.path.join(a.out, f"{key}.seed{seed}.e{a.epochs}")
            out_path, log = stem + ".out", stem + ".jsonl"
            fresh = os.path.exists(out_path) and not newer(model, out_path)
            text = open(out_path).read() if fresh else ""
            if accuracy_of(text) is None:
                print(f"== {name} seed {seed}: {a.epochs} epochs", flush=True)
                text = run([os.path.join(a.bin, "moec-run"), "train", model,
                            "--epochs", str(a.epochs), "--seed", str(seed),
                            "--threads", str(a.threads), "--log", log,
                            "--log-every", "50", "--eval-every-epoch", "off"],
                           out_path)
            accs.append(accuracy_of(text))
            rates.append(moec_log.train_rate(moec_log.train_records(log),
                                             batch)[0])
            print(f"   {name} seed {seed}: {accs[-1]:.2f} %, "
                  f"{rates[-1]:.1f} images/s", flush=True)
        rows.append({
            "router": name, "seeds": len(seeds), "epochs": a.epochs,
            "accuracy_mean": statistics.mean(accs),
            "accuracy_min": min(accs), "accuracy_max": max(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "params": params, "active_params_per_image": active,
            "mflops_per_image": flops / 1e6,
            "train_images_per_s": statistics.median(rates)})

    with open(os.path.join(a.out, "routers.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    lines = [f"{len(seeds)} seeds ({a.seeds}), {a.epochs} epochs each, "
             f"{a.threads} threads\n",
             "| router | test accuracy % (mean, min-max, std) | active params "
             "/ image | params | MFLOPs / image | train images/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['router']} | {r['accuracy_mean']:.2f} "
            f"({r['accuracy_min']:.2f}-{r['accuracy_max']:.2f}, "
            f"{r['accuracy_std']:.2f}) | {r['active_params_per_image']} | "
            f"{r['params']} | {r['mflops_per_image']:.2f} | "
            f"{r['train_images_per_s']:.0f} |")
    with open(os.path.join(a.out, "routers.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
