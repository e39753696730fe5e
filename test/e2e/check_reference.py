#!/usr/bin/env python3
"""Compiled inference against the independent fp64 reference.

For one spec: compile it with moec, write random weights (larger than the
init std, so routing is decisive and attention not uniform), run random
images through `moec-run run` and through `moec-reference`, and compare the
logits by relative error ||y - ref|| / ||ref||.

usage: check_reference.py BIN_DIR SPEC WORK_DIR [--batch B] [--images N]
       [--seed S] [--tolerance T] [--threads T] [--precision fp32|bf16]
       [--target-cpu CPU] [--min-error E]

With --precision bf16 the model is compiled with bf16 GEMMs (the reference
stays fp64): the tolerance is then bf16's (its 8-bit significand rounds
each GEMM operand by up to 2^-9 relative, over a dozen GEMMs in a row), and
--min-error checks that the error is at least bf16's, i.e. that the GEMMs
did round (a bf16 option that silently computed in f32 would fail).
--target-cpu compiles for another CPU than this one (x86-64-v3: the bf16
path without AVX512-BF16). --emulate-gpu-tiling compiles the cuda target's
tiled kernels (bf16 tensor-core tiles) for the CPU: use it with bf16's
tolerance and --min-error.
"""
import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, (shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def random_weights(rng, header):
    tensors = {}
    for name, info in header.items():
        shape = info["shape"]
        count = math.prod(shape)
        fan_in = shape[-2] if len(shape) >= 2 else 1
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            values = [1.0 + rng.gauss(0, 0.2) for _ in range(count)]
        elif len(shape) == 1 or name.endswith(".bias"):
            values = [rng.gauss(0, 0.2) for _ in range(count)]
        else:
            std = 1.5 / math.sqrt(fan_in)
            values = [rng.gauss(0, std) for _ in range(count)]
        tensors[name] = (shape, values)
    return tensors


def read_manifest(path):
    """The manifest section of a .moec file (docs/artifact.md)."""
    with open(path, "rb") as f:
        data = f.read()
    count, table = struct.unpack_from("<QQ", data, 24)
    for i in range(count):
        name, offset, size = struct.unpack_from("<16sQQ", data, table + 48 * i)
        if name.rstrip(b"\0") == b"manifest":
            return json.loads(data[offset:offset + size])
    sys.exit(f"FAIL: {path} has no manifest")


def read_f32(path):
    with open(path, "rb") as f:
        data = f.read()
    return struct.unpack(f"<{len(data) // 4}f", data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("spec")
    ap.add_argument("work")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=19)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--target-cpu", default="host")
    ap.add_argument("--min-error", type=float, default=0.0)
    ap.add_argument("--emulate-gpu-tiling", action="store_true",
                    help="compile with the cuda target's tiling, run on the "
                         "CPU")
    args = ap.parse_args()

    os.makedirs(args.work, exist_ok=True)
    rng = random.Random(args.seed)
    name = os.path.splitext(os.path.basename(args.spec))[0]
    if args.precision != "fp32":
        name += "." + args.precision
    if args.target_cpu != "host":
        name += "." + args.target_cpu
    if args.emulate_gpu_tiling:
        name += ".gpu-tiling"
    model = os.path.join(args.work, name + ".moec")
    init = os.path.join(args.work, name + ".init.safetensors")
    weights = os.path.join(args.work, name + ".safetensors")
    images = os.path.join(args.work, name + ".images.f32")
    got = os.path.join(args.work, name + ".logits.f32")
    ref = os.path.join(args.work, name + ".ref.f32")

    # Inference only: the training entry points take several times longer
    # to compile and are checked by check_grads.py.
    run([os.path.join(args.bin, "moec"), "compile", args.spec,
         "--batch", str(args.batch), "--entries=infer",
         "--precision=" + args.precision, "--target-cpu=" + args.target_cpu,
         "-o", model] + (["--emulate-gpu-tiling"] if args.emulate_gpu_tiling
                         else []))
    run([os.path.join(args.bin, "moec-run"), "init", model, "-o", init])
    write_safetensors(weights, random_weights(rng, read_safetensors(init)))

    manifest = read_manifest(model)
    inp = manifest["input"]
    per_image = inp["channels"] * inp["height"] * inp["width"]
    pixels = [rng.gauss(0, 1) for _ in range(args.images * per_image)]
    with open(images, "wb") as f:
        f.write(struct.pack(f"<{len(pixels)}f", *pixels))

    # Poison: no stale output can pass.
    for path in (got, ref):
        if os.path.exists(path):
            os.remove(path)
    run([os.path.join(args.bin, "moec-run"), "run", model, "--weights", weights,
         "--input", images, "--output", got, "--threads", str(args.threads)])
    # The reference sees what the compiled model does: `moec-run run` pads
    # the last batch with zero images, and with routing groups they route
    # together with that batch's real images; its logits of the padding
    # are left out.
    padded = -(-args.images // args.batch) * args.batch
    ref_images = os.path.join(args.work, name + ".ref-images.f32")
    with open(ref_images, "wb") as f:
        f.write(struct.pack(f"<{len(pixels)}f", *pixels))
        f.write(bytes(4 * (padded - args.images) * per_image))
    run([os.path.join(args.bin, "moec-reference"), args.spec, weights,
         ref_images, ref])

    # Images are independent, so the thread count cannot change a bit.
    single = os.path.join(args.work, name + ".logits1.f32")
    run([os.path.join(args.bin, "moec-run"), "run", model, "--weights", weights,
         "--input", images, "--output", single, "--threads", "1"])
    with open(single, "rb") as a, open(got, "rb") as b:
        if a.read() != b.read():
            sys.exit(f"FAIL: {name}: logits differ between 1 and "
                     f"{args.threads} threads")

    y, r = read_f32(got), read_f32(ref)[:args.images * manifest["classes"]]
    if len(y) != len(r) or len(y) != args.images * manifest["classes"]:
        sys.exit(f"FAIL: {name}: {len(y)} logits, reference has {len(r)}")
    if not all(math.isfinite(v) for v in y):
        sys.exit(f"FAIL: {name}: non-finite logits")
    diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(y, r)))
    norm = math.sqrt(sum(b * b for b in r))
    rel = diff / norm
    worst = max(abs(a - b) for a, b in zip(y, r))
    good = args.min_error <= rel < args.tolerance
    status = "ok" if good else "FAIL"
    bounds = (f"[{args.min_error:.0e}, {args.tolerance:.0e})" if args.min_error
              else f"< {args.tolerance:.0e}")
    print(f"{status}: {name}: relative error {rel:.3e} {bounds} (max abs "
          f"{worst:.3e}, |ref| {norm:.3e}, {args.images} images, batch "
          f"{args.batch})")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
