#!/usr/bin/env python3
"""A candidate build of a model against the CPU's fp32 build, on the same
weights and batch: infer's logits and train_step's loss and gradients.

The candidate is the cuda target (on a GPU: bench/gpu-check.sh) or the cuda
target's tiling compiled for the CPU (--emulate-gpu-tiling, in ctest). Both
run bf16 GEMM operands with fp32 accumulation, so they are held to bf16's
tolerance: logits and loss within 1e-2 relative, gradients within 5e-2.

  check_parity.py prepare BIN SPEC DIR [--batch B] [--seed S]
                  [--weights init|large]
                  (--emulate-gpu-tiling | --gpu-arch sm_80|sm_90a)
      compiles DIR/NAME.cpu.moec (fp32) and DIR/NAME.cand.moec, and writes
      the weights, images and train_step batch they are compared on
  check_parity.py check BIN DIR [--device cpu|cuda] [--names A,B]
      runs both on every prepared model (the candidate on --device) and
      compares; prints one line per model, exits 1 if any is off
  check_parity.py both BIN SPEC DIR ...   prepare, then check (ctest)

Only the Python standard library: the GPU machine runs `check` with the
carried moec-run and artifacts, without moec.
"""
import argparse
import json
import math
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_grads import Fail, make_batch, read_tensors, run, write_tensors  # noqa: E402
from check_reference import random_weights, read_manifest  # noqa: E402

LOGITS_TOL = 1e-2
LOSS_TOL = 1e-2
GRAD_TOL = 5e-2


def rel_err(got, ref):
    num = math.sqrt(sum((a - b) ** 2 for a, b in zip(got, ref)))
    den = math.sqrt(sum(b * b for b in ref))
    return num / den if den > 0 else num


def prepare(args):
    os.makedirs(args.dir, exist_ok=True)
    name = os.path.splitext(os.path.basename(args.spec))[0]
    stem = os.path.join(args.dir, name)
    moec = os.path.join(args.bin, "moec")
    common = [moec, "compile", args.spec, "--batch", str(args.batch),
              "--entries=infer,train_step", "--quiet"]
    run(common + ["-o", stem + ".cpu.moec"])
    if args.emulate_gpu_tiling:
        candidate = ["--emulate-gpu-tiling"]
    else:
        candidate = ["--target=cuda", "--gpu-arch=" + args.gpu_arch]
    run(common + candidate + ["-o", stem + ".cand.moec"])

    rng = random.Random(args.seed)
    init = stem + ".init.safetensors"
    run([os.path.join(args.bin, "moec-run"), "init", stem + ".cpu.moec",
         "-o", init, "--seed", str(args.seed)])
    if args.weights == "init":
        os.replace(init, stem + ".weights.safetensors")
    else:
        header = {n: {"shape": shape} for n, (_, shape, _) in
                  read_tensors(init).items()}
        weights = {n: ("F32", shape, values) for n, (shape, values) in
                   random_weights(rng, header).items()}
        write_tensors(stem + ".weights.safetensors", weights)

    manifest = read_manifest(stem + ".cpu.moec")
    inp = manifest["input"]
    count = args.batch * inp["channels"] * inp["height"] * inp["width"]
    with open(stem + ".images.f32", "wb") as f:
        f.write(struct.pack(f"<{count}f", *[rng.gauss(0, 1) for _ in range(count)]))
    batch = make_batch(manifest["entries"]["train_step"], manifest["classes"], rng)
    write_tensors(stem + ".train.safetensors", batch)
    with open(stem + ".parity.json", "w") as f:
        json.dump({"spec": os.path.basename(args.spec), "batch": args.batch,
                   "candidate": " ".join(candidate)}, f)
    print(f"prepared {name}: {' '.join(candidate)}")


def read_f32(path):
    with open(path, "rb") as f:
        data = f.read()
    return struct.unpack(f"<{len(data) // 4}f", data)


def check_one(args, stem):
    name = os.path.basename(stem)
    moec_run = os.path.join(args.bin, "moec-run")
    weights = stem + ".weights.safetensors"
    logits, losses, grads = {}, {}, {}
    for build, device in (("cpu", "cpu"), ("cand", args.device)):
        model = f"{stem}.{build}.moec"
        out = f"{stem}.{build}.logits.f32"
        if os.path.exists(out):
            os.remove(out)
        run([moec_run, "run", model, "--weights", weights, "--input",
             stem + ".images.f32", "--output", out, "--device", device])
        logits[build] = read_f32(out)
        step = f"{stem}.{build}.step.safetensors"
        if os.path.exists(step):
            os.remove(step)
        run([moec_run, "call", model, "--entry", "train_step", "--weights",
             weights, "--inputs", stem + ".train.safetensors", "-o", step,
             "--device", device])
        outputs = read_tensors(step)
        losses[build] = outputs["loss"][2][0]
        grads[build] = [v for key in sorted(outputs) if key.startswith("grad.")
                        for v in outputs[key][2]]
    e_logits = rel_err(logits["cand"], logits["cpu"])
    e_loss = abs(losses["cand"] - losses["cpu"]) / abs(losses["cpu"])
    e_grads = rel_err(grads["cand"], grads["cpu"])
    finite = all(math.isfinite(v) for v in logits["cand"]) and \
        math.isfinite(losses["cand"]) and all(math.isfinite(v) for v in grads["cand"])
    ok = finite and e_logits <= LOGITS_TOL and e_loss <= LOSS_TOL and \
        e_grads <= GRAD_TOL
    print(f"{'ok' if ok else 'FAIL'}: {name} on {args.device}: logits "
          f"{e_logits:.2e} (<= {LOGITS_TOL:g}), loss {losses['cand']:.5f} vs "
          f"{losses['cpu']:.5f} ({e_loss:.2e}, <= {LOSS_TOL:g}), gradients "
          f"{e_grads:.2e} (<= {GRAD_TOL:g})")
    return ok


def check(args):
    stems = sorted(os.path.join(args.dir, f[:-len(".parity.json")])
                   for f in os.listdir(args.dir) if f.endswith(".parity.json"))
    if args.names:
        wanted = set(args.names.split(","))
        stems = [s for s in stems if os.path.basename(s) in wanted]
    if not stems:
        raise Fail(f"{args.dir}: no prepared model (run `prepare` first)")
    results = [check_one(args, stem) for stem in stems]
    return all(results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["prepare", "check", "both"])
    ap.add_argument("bin")
    ap.add_argument("paths", nargs="+", help="SPEC DIR (prepare, both) or DIR")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weights", choices=["init", "large"], default="init",
                    help="the model's initial weights (default), or larger "
                         "random ones (check_reference.py's: decisive "
                         "routing, large activations)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--emulate-gpu-tiling", action="store_true")
    group.add_argument("--gpu-arch", choices=["sm_80", "sm_90a"])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--names")
    args = ap.parse_args()
    try:
        if args.command == "check":
            if len(args.paths) != 1:
                ap.error("check takes BIN DIR")
            args.dir = args.paths[0]
            ok = check(args)
        else:
            if len(args.paths) != 2:
                ap.error(f"{args.command} takes BIN SPEC DIR")
            args.spec, args.dir = args.paths
            if not args.emulate_gpu_tiling and not args.gpu_arch:
                ap.error("prepare needs --emulate-gpu-tiling or --gpu-arch")
            prepare(args)
            ok = True
            if args.command == "both":
                args.names = os.path.splitext(os.path.basename(args.spec))[0]
                ok = check(args)
    except Fail as e:
        sys.exit(f"FAIL: {e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
