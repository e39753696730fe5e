#!/usr/bin/env python3
"""moec-run analyze, moe-prune-layers and moec prune, end to end.

On a tiny every-2 model (blocks 1 and 3; block 3 with a shared expert),
random weights and a small image folder:

1. The analyze entry point's per-image statistics agree with the eval
   entry point's fused routing counts on the same batch (summed over the
   images), its gate probabilities sum to 1 and its entropies lie in
   [0, 1]; `moec-run analyze` writes a profile whose token counts add up
   to the images' token-choices less the dropped ones.
2. `moec prune` with the profile and threshold 1 prunes both layers:
   block 3 keeps its shared expert, block 1 gets its most-used expert with
   fc2 scaled by the gate mass; the weights file holds exactly the pruned
   model's parameters, carried over as documented (and `--replacement
   mean` averages the experts by load).
3. The pruned artifact's logits match the independent fp64 reference
   (moec-reference) of the dense spec those weights describe: the same
   ViT with plain MLPs in blocks 1 and 3. A per-image model with a
   super-class map: each image reaches one expert, nothing is dropped,
   and the super-class accuracy agrees with the dominant-expert counts.
4. Bad inputs: a profile of another model and weights without the
   model's tensors exit 2 and write nothing; so do `moec-run analyze` of
   a model without the entry point, without --weights, or with -o a file.

usage: check_prune.py BIN_DIR WORK_DIR
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
from check_kill_resume import png  # noqa: E402
from check_reference import (random_weights, read_f32,  # noqa: E402
                             read_safetensors, write_safetensors)
from check_routing_stats import (compile_random, read_tensors,  # noqa: E402
                                 write_batch)

MODEL = {"input": {"channels": 1, "height": 8, "width": 8}, "patch_size": 4,
         "width": 16, "depth": 4, "heads": 2, "mlp_ratio": 2, "classes": 3,
         "pooling": "cls"}
SPEC = {"name": "prune-check", "model": MODEL,
        "moe": {"placement": {"rule": "every-n", "n": 2}, "experts": 3,
                "top_k": 2, "capacity_factor": {"train": 1.0, "eval": 0.75},
                "router": {"kind": "token-choice"},
                "layers": {"3": {"shared_expert": True}}},
        "train": {"batch": 4},
        "data": {"dataset": "image-folder", "path": "images"}}
DENSE = {"name": "prune-check-dense", "model": MODEL, "train": {"batch": 4},
         "data": {"dataset": "image-folder", "path": "images"}}


def run(cmd, expect=0):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != expect:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode} (expected "
                 f"{expect})\n{p.stdout}{p.stderr}")
    return p.stdout + p.stderr


def close(a, b, tol, what):
    if len(a) != len(b):
        sys.exit(f"FAIL: {what}: {len(a)} values, expected {len(b)}")
    worst = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    if worst > tol:
        sys.exit(f"FAIL: {what}: differs by {worst:.3e} (> {tol:.0e})")


def main():
    bin_dir, work = sys.argv[1], sys.argv[2]
    moec, moec_run = os.path.join(bin_dir, "moec"), os.path.join(bin_dir,
                                                                 "moec-run")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rng = random.Random(5)
    for label in ("a", "b", "c"):
        folder = os.path.join(work, "images", "test", label)
        os.makedirs(folder)
        for i in range(5):
            png(os.path.join(folder, f"{i}.png"),
                [rng.randint(0, 255) for _ in range(64)], 8)
    spec, model, weights = compile_random(bin_dir, work, "model", SPEC, rng,
                                          "infer,eval,analyze")
    w = read_tensors(weights)

    # 1. analyze against eval on one batch of random images.
    inputs = os.path.join(work, "inputs.safetensors")
    write_batch(inputs, [rng.gauss(0, 1) for _ in range(256)], [0, 1, 2, 0])
    outs = {}
    for entry in ("eval", "analyze"):
        out = os.path.join(work, entry + ".safetensors")
        run([moec_run, "call", model, "--entry", entry, "--weights", weights,
             "--inputs", inputs, "-o", out])
        outs[entry] = read_tensors(out)
    for layer in ("blocks.1.moe", "blocks.3.moe"):
        counts = outs["eval"]["routing." + layer][1]
        tokens = outs["analyze"]["routing_tokens." + layer][1]
        probs = outs["analyze"]["routing_probs." + layer][1]
        weights_ = outs["analyze"]["routing_weights." + layer][1]
        entropy = outs["analyze"]["routing_entropy." + layer][1]
        summed = [sum(tokens[b * 3 + e] for b in range(4)) for e in range(3)]
        close(summed, counts, 1e-4, f"{layer}: analyze tokens vs eval counts")
        close([sum(probs[b * 3:b * 3 + 3]) for b in range(4)], [1.0] * 4, 1e-5,
              f"{layer}: gate probabilities per image")
        if not all(0.0 <= h <= 1.0 + 1e-6 for h in entropy):
            sys.exit(f"FAIL: {layer}: entropy outside [0, 1]: {entropy}")
        if not all(0.0 <= g <= t + 1e-6 for g, t in zip(weights_, tokens)):
            sys.exit(f"FAIL: {layer}: gate mass above the token count")
    profile_dir = os.path.join(work, "profile")
    run([moec_run, "analyze", model, "--weights", weights, "--data",
         os.path.join(work, "images"), "-o", profile_dir])
    with open(os.path.join(profile_dir, "profile.json")) as f:
        profile = json.load(f)
    layers = {l["name"]: l for l in profile["layers"]}
    if sorted(layers) != ["blocks.1.moe", "blocks.3.moe"]:
        sys.exit(f"FAIL: profile layers {sorted(layers)}")
    for l in layers.values():
        routed = sum(map(sum, l["class_expert_tokens"]))
        choices = profile["dataset"]["images"] * l["tokens_per_image"] * 2
        if abs(routed - choices * (1 - l["dropped_fraction"])) > 1e-3:
            sys.exit(f"FAIL: {l['name']}: {routed} routed tokens, "
                     f"{choices} choices, dropped {l['dropped_fraction']}")
        if l["dropped_fraction"] <= 0:
            sys.exit(f"FAIL: {l['name']}: capacity 0.75 dropped nothing")
    for name in ("heatmaps.svg", "specialisation.svg"):
        with open(os.path.join(profile_dir, name)) as f:
            if "<svg" not in f.read(200):
                sys.exit(f"FAIL: {name} is not an SVG")

    # 2. Prune both layers; check the carried-over weights.
    prof = os.path.join(profile_dir, "profile.json")
    pruned = os.path.join(work, "pruned.moec")
    run([moec, "prune", spec, "--profile", prof, "--weights", weights,
         "--threshold", "1", "--entries=infer", "--quiet", "-o", pruned])
    pw = read_tensors(os.path.join(work, "pruned.safetensors"))
    l1 = layers["blocks.1.moe"]
    top, mass = l1["most_used_expert"], l1["gate_mass_per_token"]
    d, h = MODEL["width"], MODEL["width"] * MODEL["mlp_ratio"]
    expect = {}
    for name, (shape, values) in w.items():
        if ".moe." not in name or ".shared." in name:
            expect[name] = values
    for part, size in (("fc1.weight", d * h), ("fc1.bias", h),
                       ("fc2.weight", h * d), ("fc2.bias", d)):
        src = w["blocks.1.moe.experts." + part][1]
        scale = mass if part.startswith("fc2") else 1.0
        expect["blocks.1.moe.dense." + part] = [
            scale * v for v in src[top * size:(top + 1) * size]]
    if sorted(pw) != sorted(expect):
        sys.exit(f"FAIL: pruned weights hold {sorted(set(pw) ^ set(expect))} "
                 "unexpectedly (or lack them)")
    for name, values in expect.items():
        close(pw[name][1], values, 1e-6, f"pruned weight {name}")

    # The load-weighted average.
    mean = os.path.join(work, "mean.moec")
    run([moec, "prune", spec, "--prune-layers", "blocks.1.moe", "--profile",
         prof, "--replacement", "mean", "--weights", weights,
         "--entries=infer", "--quiet", "-o", mean])
    mw = read_tensors(os.path.join(work, "mean.safetensors"))
    load = l1["load"]
    src = w["blocks.1.moe.experts.fc2.weight"][1]
    avg = [mass * sum(load[e] * src[e * h * d + i] for e in range(3))
           for i in range(h * d)]
    close(mw["blocks.1.moe.dense.fc2.weight"][1], avg, 1e-6,
          "mean replacement fc2.weight")
    if "blocks.3.moe.experts.fc1.weight" not in mw:
        sys.exit("FAIL: --prune-layers blocks.1.moe also pruned blocks.3.moe")

    # 3. The pruned model is the dense spec with these weights.
    dense_spec = os.path.join(work, "dense.json")
    with open(dense_spec, "w") as f:
        json.dump(DENSE, f)
    renamed = {}
    for name, (shape, values) in pw.items():
        for old in (".moe.dense.", ".moe.shared."):
            name = name.replace(old, ".mlp.")
        renamed[name] = (shape, values)
    dense_weights = os.path.join(work, "dense.safetensors")
    write_safetensors(dense_weights, renamed)
    images = os.path.join(work, "images.f32")
    pixels = [rng.gauss(0, 1) for _ in range(8 * 64)]
    with open(images, "wb") as f:
        f.write(struct.pack(f"<{len(pixels)}f", *pixels))
    got, ref = os.path.join(work, "pruned.f32"), os.path.join(work, "ref.f32")
    run([moec_run, "run", pruned, "--weights",
         os.path.join(work, "pruned.safetensors"), "--input", images,
         "--output", got])
    run([os.path.join(bin_dir, "moec-reference"), dense_spec, dense_weights,
         images, ref])
    y, r = read_f32(got), read_f32(ref)
    rel = (math.sqrt(sum((a - b) ** 2 for a, b in zip(y, r))) /
           math.sqrt(sum(b * b for b in r)))
    if len(y) != len(r) or not rel < 1e-4:
        sys.exit(f"FAIL: pruned logits vs the dense reference: relative "
                 f"error {rel:.3e}")

    # Per-image routing (top-1) with a super-class map: every image's tokens
    # reach exactly one expert, nothing is dropped, and the super-class
    # accuracy is the share of images whose expert is their super-class.
    _, image_model, image_weights = compile_random(
        bin_dir, work, "per-image",
        dict(SPEC, name="prune-check-per-image",
             moe={"placement": {"rule": "every-n", "n": 2}, "experts": 3,
                  "router": {"kind": "per-image"},
                  "super_class_map": [2, 0, 1]}), rng, "infer,analyze")
    run([moec_run, "analyze", image_model, "--weights", image_weights,
         "--data", os.path.join(work, "images"), "-o",
         os.path.join(work, "per-image-profile")])
    with open(os.path.join(work, "per-image-profile", "profile.json")) as f:
        image_profile = json.load(f)
    images = image_profile["dataset"]["images"]
    for l in image_profile["layers"]:
        hits = sum(l["class_dominant_expert"][c][e]
                   for c, e in enumerate([2, 0, 1]))
        if (l["experts_per_image"]["histogram"] != [0, images, 0, 0] or
                l["dropped_fraction"] != 0 or
                abs(l["super_class_accuracy"] - hits / images) > 1e-9):
            sys.exit(f"FAIL: per-image layer {l['name']}: "
                     f"{l['experts_per_image']}, dropped "
                     f"{l['dropped_fraction']}, super-class accuracy "
                     f"{l['super_class_accuracy']} (expected {hits / images})")

    # 4. Bad inputs.
    other = dict(profile, layers=[dict(l, name="blocks.2.moe")
                                  for l in profile["layers"][:1]])
    bad_profile = os.path.join(work, "other-profile.json")
    with open(bad_profile, "w") as f:
        json.dump(other, f)
    nothing = os.path.join(work, "nothing.moec")
    out = run([moec, "prune", spec, "--profile", bad_profile, "--weights",
               weights, "--entries=infer", "--quiet", "-o", nothing], expect=2)
    if "another model" not in out and "not a MoE layer" not in out:
        sys.exit(f"FAIL: a profile of another model: {out}")
    out = run([moec, "prune", spec, "--profile", prof, "--weights",
               dense_weights, "--threshold", "1",
               "--entries=infer", "--quiet", "-o", nothing], expect=2)
    if "no tensor" not in out:
        sys.exit(f"FAIL: weights without the model's tensors: {out}")
    for path in (nothing, os.path.join(work, "nothing.safetensors")):
        if os.path.exists(path):
            sys.exit(f"FAIL: a failed prune wrote {path}")
    # moec-run analyze: a model without the entry point, no weights, -o a
    # file (left as it was).
    out = run([moec_run, "analyze", pruned, "--weights",
               os.path.join(work, "pruned.safetensors"), "-o",
               os.path.join(work, "x")], expect=2)
    if "no entry point 'analyze'" not in out:
        sys.exit(f"FAIL: analyze of a model without the entry point: {out}")
    run([moec_run, "analyze", model, "-o", os.path.join(work, "x")], expect=2)
    out = run([moec_run, "analyze", model, "--weights", weights, "--data",
               os.path.join(work, "images"), "-o", spec], expect=2)
    with open(spec) as f:
        if json.load(f) != SPEC:
            sys.exit("FAIL: analyze -o FILE changed the file")
    print(f"ok: analyze agrees with eval; prune carries the weights over; "
          f"pruned vs dense reference {rel:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
