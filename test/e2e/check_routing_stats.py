#!/usr/bin/env python3
"""The analyze entry point's per-image routing statistics against the
independent fp64 reference (`moec-reference routing`).

For each router below (token choice with routing groups of 2 and capacity
drops, expert choice, Sinkhorn, soft MoE with 2 slots, per-image top-2):
compile with `--entries=infer,analyze`, write random weights, run
`moec-run call --entry analyze` on two batches of random images and
compare every `routing_tokens/weights/probs/entropy.<layer>` output with
the reference's, by relative error ||y - ref|| / ||ref||.

usage: check_routing_stats.py BIN_DIR WORK_DIR
"""
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_reference import (random_weights, read_safetensors,  # noqa: E402
                             write_safetensors)

MODEL = {"input": {"channels": 1, "height": 8, "width": 8}, "patch_size": 4,
         "width": 16, "depth": 2, "heads": 2, "mlp_ratio": 2, "classes": 3,
         "pooling": "cls"}
ROUTERS = {
    "token-choice-groups": {"experts": 3, "top_k": 2,
                            "capacity_factor": {"train": 1.0, "eval": 0.75},
                            "router": {"kind": "token-choice",
                                       "group_size": 2}},
    "expert-choice": {"experts": 3, "capacity_factor": 1.0,
                      "router": {"kind": "expert-choice"}},
    "sinkhorn": {"experts": 4, "top_k": 1, "capacity_factor": 1.0,
                 "router": {"kind": "sinkhorn"}},
    "soft": {"experts": 2, "router": {"kind": "soft", "slots_per_expert": 2}},
    "per-image": {"experts": 3, "top_k": 2, "router": {"kind": "per-image"}},
}
BATCH, TOLERANCE = 4, 1e-4


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n"
                 f"{p.stdout}{p.stderr}")
    return p.stdout


def read_tensors(path):
    """name -> (shape, values) of a safetensors file of F32 tensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = (info["shape"],
                     list(struct.unpack(f"<{(b - a) // 4}f", data[a:b])))
    return out


def compile_random(bin_dir, work, name, spec, rng, entries):
    """Writes WORK/NAME.json, compiles it with --entries=ENTRIES and writes
    random weights for it (check_reference's): (spec, model, weights)."""
    spec_path = os.path.join(work, name + ".json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    model = os.path.join(work, name + ".moec")
    run([os.path.join(bin_dir, "moec"), "compile", spec_path,
         "--entries=" + entries, "--quiet", "-o", model])
    init = os.path.join(work, name + ".init.safetensors")
    run([os.path.join(bin_dir, "moec-run"), "init", model, "-o", init])
    weights = os.path.join(work, name + ".safetensors")
    write_safetensors(weights, random_weights(rng, read_safetensors(init)))
    return spec_path, model, weights


def write_batch(path, images, labels):
    """An eval-like entry point's inputs: images (F32), labels (I32), mask 1."""
    tensors = [("images", "F32", [len(labels), 1, 8, 8],
                struct.pack(f"<{len(images)}f", *images)),
               ("labels", "I32", [len(labels)],
                struct.pack(f"<{len(labels)}i", *labels)),
               ("mask", "F32", [len(labels)],
                struct.pack(f"<{len(labels)}f", *([1.0] * len(labels))))]
    header, offset = {}, 0
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, _, blob in tensors:
            f.write(blob)


def main():
    bin_dir, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rng = random.Random(11)
    worst = 0.0
    for name, moe in ROUTERS.items():
        spec = {"name": "stats-" + name, "model": MODEL,
                "moe": dict(moe, placement={"rule": "every-n", "n": 1}),
                "train": {"batch": BATCH},
                "data": {"dataset": "image-folder", "path": "images"}}
        spec_path, model, weights = compile_random(
            bin_dir, work, name, spec, rng, "infer,analyze")
        pixels = [rng.gauss(0, 1) for _ in range(2 * BATCH * 64)]
        got = {}
        for b in range(2):
            batch = os.path.join(work, f"{name}.batch{b}.safetensors")
            write_batch(batch, pixels[b * BATCH * 64:(b + 1) * BATCH * 64],
                        [rng.randrange(3) for _ in range(BATCH)])
            out = os.path.join(work, f"{name}.out{b}.safetensors")
            run([os.path.join(bin_dir, "moec-run"), "call", model, "--entry",
                 "analyze", "--weights", weights, "--inputs", batch, "-o", out])
            for key, (shape, values) in read_tensors(out).items():
                if key.startswith("routing_"):
                    got.setdefault(key, []).extend(values)
        images = os.path.join(work, name + ".images.f32")
        with open(images, "wb") as f:
            f.write(struct.pack(f"<{len(pixels)}f", *pixels))
        ref_path = os.path.join(work, name + ".ref.safetensors")
        run([os.path.join(bin_dir, "moec-reference"), "routing", spec_path,
             weights, images, ref_path])
        ref = read_tensors(ref_path)
        if sorted(ref) != sorted(got):
            sys.exit(f"FAIL: {name}: outputs {sorted(got)}, reference "
                     f"{sorted(ref)}")
        for key, (_, r) in ref.items():
            y = got[key]
            norm = math.sqrt(sum(v * v for v in r))
            diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(y, r)))
            rel = diff / norm if norm > 0 else diff
            worst = max(worst, rel)
            if len(y) != len(r) or not rel < TOLERANCE:
                sys.exit(f"FAIL: {name}: {key}: relative error {rel:.3e} "
                         f"(>= {TOLERANCE:.0e})\n  got {y}\n  ref {r}")
    print(f"ok: routing statistics of {len(ROUTERS)} routers match the fp64 "
          f"reference (worst relative error {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
