#!/usr/bin/env python3
"""One MoE layer, fused against unfused against a dense FFN, and PyTorch 2.x.

For each shape, three depth-1 ViTs that differ only in their block's FFN are
compiled with the same batch:

* `fused`: a token-choice top-k MoE layer (moec compile, moe-fuse-routing on);
* `unfused`: the same spec with `moec compile --no-fuse` (router, dispatch,
  experts and combine as separate kernels);
* `dense`: a dense FFN of hidden k x expert hidden (the same active FLOPs per
  token).

`moec-run train --profile` and `moec-run infer --profile` time every kernel;
the layer's time is the sum over the kernels named after it (the MoE layer:
`blocks.0.moe.experts` and `blocks.0.moe.router`, forward and backward; the
dense FFN: `blocks.0.mlp.*`; the optimizer updates of its parameters are left
out), divided by the calls. Forward = the infer entry (eval capacity, set
equal to the train capacity here), forward+backward = train_step. The same
layer in PyTorch 2.x (bench/moe_layer_torch.py, grouped by expert, eager and
torch.compile) runs in the same invocation when bench/.venv exists
(bench/setup-venv.sh). Then the reference model's `train_step` images/s,
fused against unfused (`moec-run train --log`).

Shapes: `reference` (the example model's MoE layer: 50 tokens, width 64, E
4, top-2, expert hidden 128, batch 128, Fashion-MNIST) and `vit-s` (197
tokens = 224x224 images in 16x16 patches + a class token, width 384, E 8,
top-2, expert hidden 1536, batch 32, synthetic PNG images). Capacity factor
1.25 in both.

FLOP rates count the dense-equivalent work 4 S D (k H) per image forward
(3x for forward+backward), and are given as a share of the machine's fp32
FMA peak measured by bench/fma_peak.c at the same thread count.

usage: moe_layer.py [--bin build/bin] [--threads T] [--shapes reference,vit-s]
                    [--steps N] [--work DIR] [--out REPORT.md]
                    [--no-torch] [--no-train-step]
Standard library only (the PyTorch part runs in bench/.venv's Python).
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SHAPES = {
    "reference": dict(channels=1, image=28, patch=4, width=64, heads=4,
                      experts=4, top_k=2, expert_hidden=128, batch=128,
                      cf=1.25, classes=10, dataset="fashion-mnist"),
    "vit-s": dict(channels=3, image=224, patch=16, width=384, heads=6,
                  experts=8, top_k=2, expert_hidden=1536, batch=32, cf=1.25,
                  classes=2, dataset="synthetic"),
}
FMNIST = "/usr/share/datasets/fashion-mnist"


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"moe_layer: {' '.join(cmd)} exited {p.returncode}\n"
                 f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def tokens(sh):
    return (sh["image"] // sh["patch"]) ** 2 + 1


def spec(sh, kind, data):
    moe = kind != "dense"
    hidden = sh["top_k"] * sh["expert_hidden"]
    model = {"input": {"channels": sh["channels"], "height": sh["image"],
                       "width": sh["image"]},
             "patch_size": sh["patch"], "width": sh["width"], "depth": 1,
             "heads": sh["heads"], "mlp_ratio": hidden / sh["width"],
             "classes": sh["classes"], "pooling": "cls"}
    s = {"name": f"moe-layer-{kind}", "model": model,
         "train": {"batch": sh["batch"], "epochs": 1,
                   "schedule": {"kind": "constant"}},
         "data": data}
    if moe:
        s["moe"] = {"placement": {"rule": "every-n", "n": 1},
                    "experts": sh["experts"], "top_k": sh["top_k"],
                    "expert_hidden": sh["expert_hidden"],
                    "router": {"kind": "token-choice"},
                    "capacity_factor": {"train": sh["cf"], "eval": sh["cf"]}}
    return s


def png(path, pixels, size, channels):
    """An 8-bit grayscale or RGB PNG (pixels: bytes, row-major)."""
    stride = size * channels
    raw = b"".join(b"\0" + pixels[r * stride:(r + 1) * stride] for r in range(size))

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff))

    color = 0 if channels == 1 else 2
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, color, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 1)))
        f.write(chunk(b"IEND", b""))


def synthetic_images(root, sh, count):
    """An image folder of `count` random images per split and class."""
    if os.path.isdir(root):
        return
    size, ch = sh["image"], sh["channels"]
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = os.path.join(root, split, label)
            os.makedirs(folder)
            for i in range(count):
                png(os.path.join(folder, f"{i}.png"), os.urandom(size * size * ch),
                    size, ch)


PROFILE_LINE = re.compile(r"^\s+(\S+)\s+(\S+)\s+(\S+)\s+([0-9.]+)\s+[0-9.]+%(\s+[0-9.]+)?$")


def layer_seconds(output, kind, params):
    """Summed seconds of the layer's kernels in a --profile report."""
    total = 0.0
    for line in output.splitlines():
        m = PROFILE_LINE.match(line)
        if not m or not m.group(1).startswith(("moec_k", "train_step_k", "eval_k")):
            continue
        name = m.group(3)
        if name in params:
            continue  # an optimizer update
        if kind == "dense":
            mine = name.startswith("blocks.0.mlp")
        else:
            mine = name in ("blocks.0.moe.experts", "blocks.0.moe.router")
        if mine:
            total += float(m.group(4))
    return total


def param_names(bin_dir, model):
    out = run([os.path.join(bin_dir, "moec-run"), "inspect", model])
    names = set()
    section = False
    for line in out.splitlines():
        if line.startswith("parameters:"):
            section = True
            continue
        if section:
            if not line.startswith("  ") or line.strip().startswith("name "):
                if not line.startswith("  "):
                    section = False
                continue
            names.add(line.split()[0])
    return names


def fma_peak(work, threads):
    exe = os.path.join(work, "fma_peak")
    if not os.path.exists(exe):
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if not cc:
            return None
        run([cc, "-O2", "-march=native", "-ffp-contract=fast", "-pthread",
             os.path.join(HERE, "fma_peak.c"), "-o", exe])
    best = 0.0
    for _ in range(3):
        m = re.search(r"([0-9.]+) GFLOP/s", run([exe, str(threads), "0.5"]))
        best = max(best, float(m.group(1)))
    return best


def bench_shape(args, name, sh, peak):
    work = os.path.join(args.work, name)
    os.makedirs(work, exist_ok=True)
    if sh["dataset"] == "fashion-mnist":
        data = {"dataset": "fashion-mnist", "path": FMNIST}
        data_dir = FMNIST
    else:
        data_dir = os.path.join(work, "images")
        count = sh["batch"] * max(args.steps, args.batches) // 2 + sh["batch"]
        synthetic_images(data_dir, sh, count)
        data = {"dataset": "image-folder", "path": data_dir}
    moec = os.path.join(args.bin, "moec")
    moec_run = os.path.join(args.bin, "moec-run")
    s, b = tokens(sh), sh["batch"]
    flops_fwd = 4 * s * sh["width"] * sh["top_k"] * sh["expert_hidden"] * b
    rows = {}
    for kind in ("fused", "unfused", "dense"):
        spec_path = os.path.join(work, f"{kind}.json")
        with open(spec_path, "w") as f:
            json.dump(spec(sh, kind, data), f)
        model = os.path.join(work, f"{kind}.moec")
        extra = ["--no-fuse"] if kind == "unfused" else []
        t0 = time.time()
        run([moec, "compile", spec_path, "--quiet", "-o", model] + extra)
        print(f"  {name}/{kind}: compiled in {time.time() - t0:.0f} s", flush=True)
        params = param_names(args.bin, model)
        out = run([moec_run, "train", model, "--data", data_dir, "--max-steps",
                   str(args.steps), "--threads", str(args.threads),
                   "--eval-every-epoch", "off", "--profile", "100000"])
        fwdbwd = layer_seconds(out, kind, params) / args.steps
        out = run([moec_run, "infer", model, "--data", data_dir, "--limit",
                   str(b * args.batches), "--threads", str(args.threads),
                   "--profile", "100000"])
        fwd = layer_seconds(out, kind, params) / args.batches
        rows[kind] = (fwd, fwdbwd)
    torch = {}
    if not args.no_torch:
        python = os.path.join(HERE, ".venv", "bin", "python")
        if os.path.exists(python):
            out_json = os.path.join(work, "torch.json")
            run([python, os.path.join(HERE, "moe_layer_torch.py"), "--tokens",
                 str(s), "--width", str(sh["width"]), "--experts",
                 str(sh["experts"]), "--top-k", str(sh["top_k"]),
                 "--expert-hidden", str(sh["expert_hidden"]), "--batch", str(b),
                 "--capacity-factor", str(sh["cf"]), "--threads",
                 str(args.threads), "--json", out_json])
            with open(out_json) as f:
                torch = json.load(f)
        else:
            torch = {"error": "no bench/.venv (run bench/setup-venv.sh)"}
    return dict(shape=sh, tokens=s, flops_fwd=flops_fwd, moec=rows, torch=torch,
                peak=peak)


def train_step_rates(args):
    """images/s of the reference model's train_step, fused and unfused."""
    spec_path = os.path.join(ROOT, "examples", "vimoe-tiny-fmnist.json")
    rates = {}
    for kind, extra in (("fused", []), ("unfused", ["--no-fuse"])):
        model = os.path.join(args.work, f"vimoe-tiny-{kind}.moec")
        run([os.path.join(args.bin, "moec"), "compile", spec_path, "--quiet",
             "-o", model] + extra)
        log = os.path.join(args.work, f"vimoe-tiny-{kind}.jsonl")
        if os.path.exists(log):
            os.remove(log)
        run([os.path.join(args.bin, "moec-run"), "train", model, "--max-steps",
             str(args.train_steps), "--threads", str(args.threads),
             "--eval-every-epoch", "off", "--log", log, "--log-every", "1"])
        recs = [json.loads(x) for x in open(log)]
        per = [r["images_per_s"] for r in recs
               if r.get("split", "train") == "train" and r.get("images_per_s")][1:]
        # Harmonic mean: images over summed step times.
        rates[kind] = len(per) / sum(1.0 / x for x in per)
    return rates


def report(results, rates, args, peak):
    lines = []
    add = lines.append
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    add(f"# One MoE layer: fused vs unfused vs dense, and PyTorch 2.x")
    add("")
    add(f"{cpu}, {os.cpu_count()} logical CPUs, {args.threads} thread(s); "
        f"fp32 FMA peak at {args.threads} thread(s) "
        f"{peak:.1f} GFLOP/s (bench/fma_peak.c)." if peak else "")
    add("")
    for name, r in results.items():
        sh = r["shape"]
        add(f"## {name}: {r['tokens']} tokens, width {sh['width']}, E {sh['experts']}, "
            f"top-{sh['top_k']}, expert hidden {sh['expert_hidden']}, batch "
            f"{sh['batch']}, capacity factor {sh['cf']}")
        add("")
        add("| | forward ms | fwd+bwd ms | fwd+bwd GFLOP/s | share of peak |")
        add("|---|---|---|---|---|")
        m = r["moec"]
        for kind in ("fused", "unfused", "dense"):
            fwd, fb = m[kind]
            gf = 3 * r["flops_fwd"] / fb * 1e-9 if fb > 0 else 0.0
            share = f"{100 * gf / peak:.0f}%" if peak else "n/a"
            label = {"fused": "moec fused MoE", "unfused": "moec unfused MoE",
                     "dense": "moec dense FFN (hidden k x H)"}[kind]
            add(f"| {label} | {1e3 * fwd:.2f} | {1e3 * fb:.2f} | {gf:.1f} | {share} |")
        t = r["torch"].get("results", {}) if isinstance(r["torch"], dict) else {}
        for key, label in (("moe", "PyTorch MoE (grouped by expert)"),
                           ("dense", "PyTorch dense FFN")):
            for mode in ("eager", "compile"):
                fwd = t.get(f"{key}_fwd_{mode}_ms")
                fb = t.get(f"{key}_fwdbwd_{mode}_ms")
                if fwd is None or fb is None:
                    continue
                gf = 3 * r["flops_fwd"] / (fb * 1e-3) * 1e-9
                share = f"{100 * gf / peak:.0f}%" if peak else "n/a"
                add(f"| {label}, {mode} | {fwd:.2f} | {fb:.2f} | {gf:.1f} | {share} |")
        if r["torch"].get("error"):
            add(f"| PyTorch | {r['torch']['error']} | | | |")
        fu, un, de = m["fused"], m["unfused"], m["dense"]
        add("")
        add(f"Ratios (time): fused / unfused forward {fu[0] / un[0]:.2f}, "
            f"fwd+bwd {fu[1] / un[1]:.2f}; fused / dense forward "
            f"{fu[0] / de[0]:.2f}, fwd+bwd {fu[1] / de[1]:.2f} (goal: <= 1.25)."
            + (f" PyTorch eager MoE fwd+bwd / moec fused: "
               f"{t['moe_fwdbwd_eager_ms'] * 1e-3 / fu[1]:.2f}x."
               if t.get("moe_fwdbwd_eager_ms") else ""))
        if t.get("torch") or r["torch"].get("torch"):
            add(f"PyTorch {r['torch'].get('torch')}.")
        add("")
    if rates:
        add(f"## Reference model train_step (examples/vimoe-tiny-fmnist.json, "
            f"{args.train_steps} steps)")
        add("")
        add(f"fused {rates['fused']:.0f} images/s, unfused {rates['unfused']:.0f} "
            f"images/s: fused / unfused {rates['fused'] / rates['unfused']:.2f}x.")
        add("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", default="reference,vit-s")
    ap.add_argument("--steps", type=int, default=6,
                    help="train steps (and infer batches) timed per model")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None, help="also write the report here")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-train-step", action="store_true")
    args = ap.parse_args()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"moe_layer: unknown shape '{s}' (known: {', '.join(SHAPES)})")
    if args.threads < 1:
        sys.exit("moe_layer: --threads must be >= 1")
    args.work = args.work or tempfile.mkdtemp(prefix="moe-layer-")
    os.makedirs(args.work, exist_ok=True)
    peak = fma_peak(args.work, args.threads)
    results = {}
    for s in shapes:
        print(f"moe_layer: {s}", flush=True)
        results[s] = bench_shape(args, s, SHAPES[s], peak)
    rates = None if args.no_train_step else train_step_rates(args)
    text = report(results, rates, args, peak)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
