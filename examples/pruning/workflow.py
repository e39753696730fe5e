#!/usr/bin/env python3
"""ViMoE's workflow on Fashion-MNIST: train, analyze, prune, fine-tune,
evaluate; and the Sweet Spot paper's Last-2 against Every-2.

For each seed:
  1. train every-2.json (MoE in blocks 1, 3, 5, each with a shared
     expert) and last-2.json (blocks 4, 5) with `moec-run train`;
  2. `moec-run analyze` the Every-2 model on 10000 train images (the
     pruning decision never sees the test set);
  3. `moec prune every-2-finetune.json --profile ...`: the layers whose
     image-level NMI is below --threshold keep only their shared expert;
  4. fine-tune the pruned model for one epoch (every-2-finetune.json's
     recipe), and, as the control, the unpruned model for the same epoch;
     to see whether the criterion picks the right layers, also prune
     exactly the least specialising layer (lowest image NMI) and, instead,
     the most specialising one (highest), each fine-tuned the same way;
  5. evaluate every model on the test set.
Then the speed of the models (`moec-run infer` on the test set, the
models alternating, the median of --repeats runs) and their parameters and
FLOPs (`moec-run inspect`).

usage: python3 examples/pruning/workflow.py [--bin build/bin] [--seeds 0,1,2]
           [--threads 2] [--threshold 0.05] [--repeats 3] [--out DIR]
Writes DIR/pruning.md and DIR/pruning.csv (default DIR: build/pruning);
weights already in DIR are reused (a run is then not repeated).
"""
import argparse
import csv
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(cmd, log=None):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if log:
        with open(log, "w") as f:
            f.write(p.stdout + p.stderr)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n"
                 f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def spec_path(name):
    return os.path.join(HERE, name + ".json")


def tagged(out, name, ext):
    """DIR/NAME-<hash of the spec>.EXT: an edited spec gets new files."""
    with open(spec_path(name), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:10]
    return os.path.join(out, f"{name}-{digest}.{ext}")


def inspect(bin_dir, model):
    text = run([os.path.join(bin_dir, "moec-run"), "inspect", model])
    get = lambda key: int(re.search(key + r":\s+(\d+)", text).group(1))
    return {"params": get("param count"),
            "active": get("active params per image"),
            "flops": get("FLOPs per image")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "pruning"))
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s != ""]
    os.makedirs(a.out, exist_ok=True)
    moec = os.path.join(a.bin, "moec")
    moec_run = os.path.join(a.bin, "moec-run")
    threads = ["--threads", str(a.threads)]

    def compile_once(name):
        model = tagged(a.out, name, "moec")
        if not os.path.exists(model):
            run([moec, "compile", spec_path(name), "--quiet", "-o", model])
        return model

    def accuracy(model, weights):
        text = run([moec_run, "infer", model, "--weights", weights] + threads)
        return 100 * float(re.search(r"accuracy: ([0-9.]+)", text).group(1))

    def train(model, weights_out, seed, init=None):
        if not os.path.exists(weights_out):
            cmd = [moec_run, "train", model, "--seed", str(seed), "-o",
                   weights_out] + threads
            if init:
                cmd += ["--weights", init]
            run(cmd, log=weights_out + ".log")
        return weights_out

    every2, last2 = compile_once("every-2"), compile_once("last-2")
    finetune = compile_once("every-2-finetune")
    rows, pruned_models = [], {}
    for seed in seeds:
        base = train(every2, os.path.join(a.out, f"every-2-s{seed}.safetensors"),
                     seed)
        last = train(last2, os.path.join(a.out, f"last-2-s{seed}.safetensors"),
                     seed)
        profile_dir = os.path.join(a.out, f"profile-s{seed}")
        run([moec_run, "analyze", every2, "--weights", base, "--split", "train",
             "--limit", "10000", "--threshold", str(a.threshold), "-o",
             profile_dir] + threads)
        with open(os.path.join(profile_dir, "profile.json")) as f:
            profile = json.load(f)
        pruned = os.path.join(a.out, f"pruned-s{seed}.moec")
        pruned_weights = os.path.join(a.out, f"pruned-s{seed}.safetensors")
        run([moec, "prune", spec_path("every-2-finetune"), "--profile",
             os.path.join(profile_dir, "profile.json"), "--weights", base,
             "--threshold", str(a.threshold), "--quiet", "-o", pruned])
        pruned_models[seed] = pruned
        tuned = train(pruned, os.path.join(a.out, f"pruned-ft-s{seed}.safetensors"),
                      seed, init=pruned_weights)
        control = train(finetune,
                        os.path.join(a.out, f"every-2-ft-s{seed}.safetensors"),
                        seed, init=base)
        # One layer by rank: the least and the most specialising.
        by_nmi = sorted(profile["layers"], key=lambda l: l["image_nmi"])
        ranked = {}
        for tag, layer in (("least", by_nmi[0]), ("most", by_nmi[-1])):
            model = os.path.join(a.out, f"pruned-{tag}-s{seed}.moec")
            run([moec, "prune", spec_path("every-2-finetune"), "--profile",
                 os.path.join(profile_dir, "profile.json"), "--weights", base,
                 "--prune-layers", layer["name"], "--quiet", "-o", model])
            start = model[:-len(".moec")] + ".safetensors"
            tuned_rank = train(model, os.path.join(
                a.out, f"pruned-{tag}-ft-s{seed}.safetensors"), seed, init=start)
            ranked[tag] = (layer["name"], accuracy(model, start),
                           accuracy(model, tuned_rank))
        row = {
            "seed": seed,
            "pruned_layers": " ".join(l["name"] for l in profile["layers"]
                                      if not l["specialises"]) or "none",
            "image_nmi": " ".join(f"{l['image_nmi']:.3f}"
                                  for l in profile["layers"]),
            "every2": accuracy(every2, base),
            "last2": accuracy(last2, last),
            "pruned_zero_shot": accuracy(pruned, pruned_weights),
            "every2_ft": accuracy(finetune, control),
            "pruned_ft": accuracy(pruned, tuned),
            "least_layer": ranked["least"][0],
            "least_zero_shot": ranked["least"][1],
            "least_ft": ranked["least"][2],
            "most_layer": ranked["most"][0],
            "most_zero_shot": ranked["most"][1],
            "most_ft": ranked["most"][2],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    # Speed: the models alternate, each run over the whole test set.
    models = {"every-2": (every2, os.path.join(a.out, f"every-2-s{seeds[0]}.safetensors")),
              "last-2": (last2, os.path.join(a.out, f"last-2-s{seeds[0]}.safetensors")),
              "every-2 pruned": (pruned_models[seeds[0]],
                                 os.path.join(a.out, f"pruned-s{seeds[0]}.safetensors")),
              "one layer pruned": (
                  os.path.join(a.out, f"pruned-least-s{seeds[0]}.moec"),
                  os.path.join(a.out, f"pruned-least-s{seeds[0]}.safetensors"))}
    speeds = {k: [] for k in models}
    for _ in range(a.repeats):
        for name, (model, weights) in models.items():
            text = run([moec_run, "infer", model, "--weights", weights] + threads)
            speeds[name].append(float(re.search(r"throughput: ([0-9.]+)",
                                                text).group(1)))
    costs = {name: inspect(a.bin, model) for name, (model, _) in models.items()}

    def stats(key):
        v = [r[key] for r in rows]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return statistics.mean(v), min(v), max(v), sd

    with open(os.path.join(a.out, "pruning.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| model | params | active params / image | MFLOPs / image | "
             "infer images/s | test top-1 % (mean, min-max, std) |",
             "|---|---|---|---|---|---|"]
    table = [("Every-2, 3 epochs", "every-2", "every2"),
             ("Every-2, + 1 epoch fine-tune", "every-2", "every2_ft"),
             ("Every-2 pruned, no fine-tune", "every-2 pruned", "pruned_zero_shot"),
             ("Every-2 pruned, + 1 epoch fine-tune", "every-2 pruned", "pruned_ft"),
             ("least specialising layer pruned, no fine-tune", "one layer pruned",
              "least_zero_shot"),
             ("least specialising layer pruned, + 1 epoch fine-tune",
              "one layer pruned", "least_ft"),
             ("most specialising layer pruned, no fine-tune", "one layer pruned",
              "most_zero_shot"),
             ("most specialising layer pruned, + 1 epoch fine-tune",
              "one layer pruned", "most_ft"),
             ("Last-2, 3 epochs", "last-2", "last2")]
    for label, model, key in table:
        c = costs[model]
        mean, lo, hi, sd = stats(key)
        lines.append(f"| {label} | {c['params']} | {c['active']} | "
                     f"{c['flops'] / 1e6:.2f} | "
                     f"{statistics.median(speeds[model]):.0f} | "
                     f"{mean:.2f} ({lo:.2f}-{hi:.2f}; {sd:.2f}) |")
    def diff_line(label, key):
        d = [r[key] - r["every2_ft"] for r in rows]
        return (f"{label} minus unpruned after the same fine-tune, per seed: "
                + ", ".join(f"{v:+.2f}" for v in d)
                + f" (mean {statistics.mean(d):+.2f} points).")
    lines += ["", diff_line("Pruned by the threshold", "pruned_ft"),
              diff_line("Least specialising layer pruned", "least_ft"),
              diff_line("Most specialising layer pruned", "most_ft"),
              "Least / most specialising layer per seed: "
              + "; ".join(f"seed {r['seed']}: {r['least_layer']} / "
                          f"{r['most_layer']}" for r in rows) + ".",
              "Pruned layers (image NMI of blocks 1, 3, 5), per seed: "
              + "; ".join(f"seed {r['seed']}: {r['pruned_layers']} "
                          f"({r['image_nmi']})" for r in rows),
              f"Pruning model (speed, params): seed {seeds[0]}'s. "
              f"Threads {a.threads}; threshold {a.threshold}."]
    with open(os.path.join(a.out, "pruning.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
