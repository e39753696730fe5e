#!/usr/bin/env python3
"""Compiled training gradients against the independent fp64 reference.

For each spec: compile it (`moec compile SPEC --batch B`, B = the spec's
train.batch unless --batch is given), write random
weights (`moec-run init`, then larger values as check_reference.py does, so
that routing is decisive), draw a random batch (images, labels, standard
normal noise for every `normal_noise` input of `train_step`; step 0,
total_steps 10, warmup_steps 0, lr 0 so nothing moves), run

    moec-run call MODEL --entry train_step --weights W --inputs BATCH -o OUT

and compare with `moec-reference` (test/reference/README.md, training mode):

  * loss (and ce_loss, aux_loss): relative error < --loss-tol (1e-5);
    `correct` must be equal;
  * every `grad.<param>`: at --per-tensor sampled entries (default: every
    entry when parameters x batch <= 100000, as for the tiny
    test/e2e/specs-train models, else 32 per tensor), against the
    reference's central finite differences in double (`moec-reference
    fdgrad`): ||g - fd|| / ||fd|| < --grad-tol (1e-3). A tensor whose sampled
    FD norm is below 1e-3 of the largest tensor's is compared against that
    floor instead (its gradient is ~0: relative error is meaningless);
  * `grad_norm` = the L2 norm of all `grad.*` outputs (relative 1e-4), and
    `lr_used` = 0;
  * then one more train_step with step 2, total_steps 10, warmup_steps 4,
    lr 0.01 (unless --no-optimizer-check): lr_used = 0.0075, and the
    `updated.<param>` and optimizer state outputs against the AdamW / SGD
    formulas of docs/training-abi.md (global-norm clipping, no decay for
    rank-1 parameters, cls_token and pos_embed, bias correction with
    step + 1) applied to that call's own gradients from zero state: update
    relative error < 1e-3, state < 1e-4, and no common scale error on the
    updates (their least-squares ratio to the reference within 1e-6 of 1,
    which catches a step scalar such as a bias correction computed in f32).
  * then `eval` (unless --no-eval-check) on a random batch under four masks
    (all images, all but the last, only the last, none): `loss_sum` and
    `correct` against the plain cross-entropy and top-1 of the reference's
    inference logits (eval capacity, no noise) over the masked images
    (relative 1e-4), and every `routing.<layer>` output (role
    `routing_counts`) additive over disjoint masks, zero under the empty
    mask, non-negative, and whole numbers for one-hot routers (with routing
    groups only under the full and the empty mask: a partly counted group's
    counts are prorated).

  * then (unless --no-unfused-check) the same model compiled with
    `moec compile --no-fuse` (every MoE layer as separate router, dispatch,
    experts and combine kernels) on the same weights and batch: every
    output of `train_step` (losses, `correct`, every gradient, the norm)
    and the logits of `infer` against the fused model's, relative error
    < --unfused-tol (1e-5; a tensor whose norm is below 1e-3 of the largest
    gradient's is held to that floor), `correct` equal; and the artifact
    must contain no `moe.router`/`moe.dispatch`/`moe.combine` kernel of a
    fusable layer (one of a `moe.routed_ffn*` op per fused layer instead).

The batch is redrawn (up to --tries times) until every routing decision of
the reference has a margin of at least --min-margin, so that float32 cannot
route differently from float64.

usage: check_grads.py SPEC [SPEC ...] [--bin DIR] [--moec PATH]
           [--moec-run PATH] [--reference PATH] [--work DIR] [--batch B]
           [--seed S] [--per-tensor K|all|auto] [--threads T]
           [--no-optimizer-check] [--no-eval-check] [--verbose]
       (default --bin: build/bin of this checkout; the three binaries
        default to BIN/moec, BIN/moec-run, BIN/moec-reference)

Exit status: 0 if every spec passes, 1 otherwise. Python standard library
only.
"""
import argparse
import json
import math
import os
import random
import re
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_reference import (random_weights, read_manifest,  # noqa: E402
                             read_safetensors as read_header,
                             write_safetensors as write_f32_weights)

ROOT = os.path.dirname(os.path.dirname(HERE))


class Fail(Exception):
    pass


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Fail(f"{' '.join(cmd)} exited {proc.returncode}\n"
                   f"{proc.stderr.strip()}")
    return proc


def call_entry(args, model, entry, weights, inputs, out):
    """`moec-run call` of `entry` on the batch file `inputs`: its outputs
    (read from `out`, removed first so no stale output can pass)."""
    if os.path.exists(out):
        os.remove(out)
    cmd = [args.moec_run, "call", model, "--entry", entry, "--weights",
           weights, "--inputs", inputs, "-o", out]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    run(cmd)
    return read_tensors(out)


# ---------------------------------------------------------------------------
# safetensors with F32 / F64 / I32 tensors (scalars have shape [])
# ---------------------------------------------------------------------------

_FMT = {"F32": ("f", 4), "F64": ("d", 8), "I32": ("i", 4)}


def read_tensors(path):
    """{name: (dtype, shape, values)} of every tensor in `path`."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        dtype, shape = info["dtype"], info["shape"]
        if dtype not in _FMT:
            raise Fail(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        code, size = _FMT[dtype]
        begin, end = info["data_offsets"]
        count = math.prod(shape)
        if end - begin != count * size:
            raise Fail(f"{path}: tensor '{name}': {end - begin} bytes for shape {shape}")
        out[name] = (dtype, shape,
                     struct.unpack_from(f"<{count}{code}", data, 8 + n + begin))
    return out


def write_tensors(path, tensors):
    """tensors: {name: (dtype, shape, values)}."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, values) in tensors.items():
        code, _ = _FMT[dtype]
        blob = struct.pack(f"<{len(values)}{code}", *values)
        header[name] = {"dtype": dtype, "shape": shape,
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


# ---------------------------------------------------------------------------
# One spec
# ---------------------------------------------------------------------------

FIXED_SCALARS = {"step": 0.0, "total_steps": 10.0, "warmup_steps": 0.0, "lr": 0.0}


def make_batch(entry, classes, rng):
    """Inputs of `train_step` by name: (dtype, shape, values)."""
    batch = {}
    for t in entry["inputs"]:
        name, shape = t["name"], t["shape"]
        dtype = "I32" if t.get("dtype", "f32") == "i32" else "F32"
        count = math.prod(shape)
        if name == "labels":
            if dtype != "I32":
                raise Fail(f"train_step input 'labels' has dtype {t.get('dtype')}, "
                           "expected i32")
            values = [rng.randrange(classes) for _ in range(count)]
        elif name == "images" or t.get("role") == "normal_noise":
            values = [rng.gauss(0, 1) for _ in range(count)]
        elif name in FIXED_SCALARS:
            values = [FIXED_SCALARS[name]] * count
        else:
            raise Fail(f"train_step has an input '{name}' (role "
                       f"{t.get('role')!r}) that docs/training-abi.md does not define")
        batch[name] = (dtype, shape, values)
    return batch


def norm(v):
    return math.sqrt(sum(x * x for x in v))


# The optimizer step checked by check_optimizer: step 2 of 10 with 4 warm-up
# steps (lr_t = lr * 3/4, bias corrections 1 - beta^3), from zero state.
OPT_SCALARS = {"step": 2.0, "total_steps": 10.0, "warmup_steps": 4.0, "lr": 0.01}


def no_decay(name, shape):
    """docs/training-abi.md: no weight decay for biases (any rank),
    rank-1 parameters, cls_token and pos_embed."""
    return (len(shape) == 1 or name.endswith(".bias")
            or name in ("cls_token", "pos_embed"))


def check_optimizer(args, manifest, entry, batch, weights_path, model, stem):
    """One train_step with lr > 0 and zero optimizer state: lr_used, the
    updated parameters and the state tensors against docs/training-abi.md's
    formulas, applied to the step's own gradient outputs. Returns problems."""
    problems = []
    opt = manifest.get("optimizer")
    if not opt:
        return ["the manifest has no 'optimizer' object"]
    b2 = dict(batch)
    for k, v in OPT_SCALARS.items():
        if k in b2:
            b2[k] = ("F32", b2[k][1], [v] * len(b2[k][2]))
    in_path, out_path = stem + ".opt.batch.safetensors", stem + ".opt.out.safetensors"
    write_tensors(in_path, b2)
    got = call_entry(args, model, "train_step", weights_path, in_path, out_path)
    w = read_tensors(weights_path)
    t = OPT_SCALARS["step"]
    lr_t = OPT_SCALARS["lr"] * (t + 1) / OPT_SCALARS["warmup_steps"]
    if "lr_used" in got and not abs(got["lr_used"][2][0] - lr_t) <= 1e-6 * lr_t:
        problems.append(f"optimizer step: lr_used {got['lr_used'][2][0]!r}, "
                        f"expected {lr_t!r} (step 2, warm-up 4, lr 0.01)")
    grads = {p["name"]: got.get("grad." + p["name"], (None, None, None))[2]
             for p in manifest["params"]}
    if any(g is None for g in grads.values()):
        return problems  # reported by the main check
    gn = norm([x for g in grads.values() for x in g])
    clip = float(opt.get("grad_clip", 0.0))
    coef = min(1.0, clip / (gn + 1e-6)) if clip > 0 else 1.0
    kind = opt.get("kind", "adamw")
    wd = float(opt.get("weight_decay", 0.0))
    b1 = float(opt.get("beta1", 0.9))
    b2_ = float(opt.get("beta2", 0.999))
    eps = float(opt.get("eps", 1e-8))
    state_names = {st["name"] for st in manifest.get("state", [])}
    worst_p = worst_s = worst_raw = 0.0
    dot = dd = 0.0  # <got update, reference update>, |reference update|^2
    for p in manifest["params"]:
        n, shape = p["name"], p["shape"]
        pv, g = w[n][2], grads[n]
        gc = [x * coef for x in g]
        decay = 0.0 if no_decay(n, shape) else wd
        slots = {}
        if kind == "sgd":
            # buf = momentum * 0 + g' on the first step from zero state.
            buf = [a + decay * b for a, b in zip(gc, pv)]
            slots["momentum"] = buf
            delta = [-lr_t * x for x in buf]
        else:
            m = [(1 - b1) * x for x in gc]
            v = [(1 - b2_) * x * x for x in gc]
            c1, c2 = 1 - b1 ** (t + 1), 1 - b2_ ** (t + 1)
            slots["m"], slots["v"] = m, v
            delta = [-lr_t * (decay * pp + (mm / c1) / (math.sqrt(vv / c2) + eps))
                     for pp, mm, vv in zip(pv, m, v)]
        key = "updated." + n
        if key not in got:
            problems.append(f"optimizer step: output '{key}' missing")
        else:
            d_got = [a - b for a, b in zip(got[key][2], pv)]
            # float32 rounding of p + delta: a few ulps of |p|.
            slack = norm([4 * 2.0 ** -24 * abs(x) for x in pv])
            raw = norm([a - b for a, b in zip(d_got, delta)])
            dot += sum(a * b for a, b in zip(d_got, delta))
            dd += sum(b * b for b in delta)
            worst_raw = max(worst_raw, raw / max(norm(delta), 1e-30))
            err = max(0.0, raw - slack)
            err /= max(norm(delta), 1e-30)
            worst_p = max(worst_p, err)
            if not err < 1e-3:
                problems.append(f"optimizer step: {key}: relative error {err:.2e} "
                                f"of the update (|update| {norm(delta):.3e})")
        for slot, val in slots.items():
            sname = f"optimizer.{slot}.{n}"
            if sname not in state_names:
                problems.append(f"optimizer step: the manifest has no state '{sname}'")
                continue
            if sname not in got:
                problems.append(f"optimizer step: output '{sname}' missing")
                continue
            den = norm(val)
            diff = norm([a - b for a, b in zip(got[sname][2], val)])
            err = diff / den if den else diff
            worst_s = max(worst_s, err)
            if not err < 1e-4:
                problems.append(f"optimizer step: {sname}: relative error {err:.2e}")
    # A common factor on every update (a schedule or bias-correction scalar
    # computed imprecisely) shows as a scale error: the f32 rounding of the
    # updates themselves averages out far below 1e-6.
    scale_err = dot / dd - 1 if dd else 0.0
    if not abs(scale_err) < 1e-6:
        problems.append(f"optimizer step: the updates are scaled by 1 {scale_err:+.2e} "
                        "against the reference (a step scalar off, e.g. AdamW's bias "
                        "corrections)")
    if args.verbose:
        print(f"    optimizer step ({kind}, clip coefficient {coef:.4g}): updates max rel "
              f"err {worst_p:.2e} ({worst_raw:.2e} before the rounding allowance), "
              f"systematic scale error {scale_err:+.2e}, "
              f"state max rel err {worst_s:.2e}")
    return problems


def check_eval(args, spec, manifest, weights_path, model, stem, rng):
    """`eval` under four masks against the reference's inference logits
    (docs/training-abi.md, "eval"). Returns (problems, summary)."""
    entry = manifest.get("entries", {}).get("eval")
    if entry is None:
        return [f"{model} has no eval entry point"], ""
    batch = manifest["batch"]
    inp = manifest["input"]
    shape = [batch, inp["channels"], inp["height"], inp["width"]]
    classes = manifest["classes"]
    images = [rng.gauss(0, 1) for _ in range(math.prod(shape))]
    labels = [rng.randrange(classes) for _ in range(batch)]
    images_path, ref_path = stem + ".eval.images.f32", stem + ".eval.ref.f32"
    with open(images_path, "wb") as f:
        f.write(struct.pack(f"<{len(images)}f", *images))
    if os.path.exists(ref_path):
        os.remove(ref_path)
    run([args.reference, spec, weights_path, images_path, ref_path])
    with open(ref_path, "rb") as f:
        data = f.read()
    ref = struct.unpack(f"<{len(data) // 4}f", data)
    if len(ref) != batch * classes:
        return [f"eval: the reference wrote {len(ref)} logits, expected "
                f"{batch * classes}"], ""
    rows = [ref[i * classes:(i + 1) * classes] for i in range(batch)]
    ce, hit, close = [], [], []
    for row, y in zip(rows, labels):
        top = max(row)
        ce.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[y])
        hit.append(1.0 if row.index(top) == y else 0.0)  # first on ties
        second = max((v for j, v in enumerate(row) if j != row.index(top)),
                     default=-math.inf)
        close.append(top - second < 1e-4 * max(1.0, abs(top)))

    with open(spec) as f:
        moe = json.load(f).get("moe") or {}

    def router_of(key):
        """The router settings of the layer of output `key`
        ("routing.blocks.3.moe"): /moe/layers/3/router over /moe/router (a
        layer of another kind starts from that kind's defaults)."""
        block = key.split(".")[2] if key.count(".") >= 3 else None
        base = moe.get("router") or {}
        own = ((moe.get("layers") or {}).get(block) or {}).get("router") or {}
        if own.get("kind", base.get("kind")) != base.get("kind"):
            return own
        return {**base, **own}

    def whole_counts(key, what):
        """Whether the counts must be whole numbers: a one-hot router, and
        with routing groups only when every group counts whole (each
        group's counts are weighted by the share of its images that
        count)."""
        router = router_of(key)
        kind = router.get("kind")
        if kind is None or kind == "soft":
            return False
        return router.get("group_size", 1) == 1 or what in ("all", "none")
    masks = {"all": [1.0] * batch,
             "all but the last": [1.0] * (batch - 1) + [0.0],
             "only the last": [0.0] * (batch - 1) + [1.0],
             "none": [0.0] * batch}
    problems, outputs = [], {}
    for what, mask in masks.items():
        in_path = stem + ".eval.batch.safetensors"
        out_path = stem + ".eval.out.safetensors"
        write_tensors(in_path, {"images": ("F32", shape, images),
                                "labels": ("I32", [batch], labels),
                                "mask": ("F32", [batch], mask)})
        got = call_entry(args, model, "eval", weights_path, in_path, out_path)
        outputs[what] = got
        missing = [key for key in ("loss_sum", "correct")
                   if key not in got or got[key][1] != []]
        if missing:
            return problems + [f"eval ({what}): output '{key}' missing or not a "
                               "scalar" for key in missing], ""
        want_loss = sum(m * c for m, c in zip(mask, ce))
        loss = got["loss_sum"][2][0]
        if not abs(loss - want_loss) <= 1e-4 * max(abs(want_loss), 1e-3):
            problems.append(f"eval ({what}): loss_sum {loss!r}, reference {want_loss!r}")
        want_correct = sum(m * h for m, h in zip(mask, hit))
        slack = sum(1 for m, c in zip(mask, close) if m and c)
        correct = got["correct"][2][0]
        if not abs(correct - want_correct) <= slack:
            problems.append(f"eval ({what}): correct {correct!r}, reference "
                            f"{want_correct!r}")

    routing = [t for t in entry["outputs"] if t.get("role") == "routing_counts"]
    for t in routing:
        key = t["name"]
        counts = {what: outputs[what].get(key, (None, None, None))[2]
                  for what in masks}
        if any(c is None for c in counts.values()):
            problems.append(f"eval: output '{key}' missing")
            continue
        total = sum(counts["all"])
        tol = 1e-5 * max(1.0, total)
        split = [a + b for a, b in zip(counts["all but the last"],
                                       counts["only the last"])]
        if any(abs(a - b) > tol for a, b in zip(counts["all"], split)):
            problems.append(f"eval: {key}: counts of all images {list(counts['all'])} "
                            f"are not the sum of the counts of a split of them "
                            f"{split}")
        if any(v != 0.0 for v in counts["none"]):
            problems.append(f"eval: {key}: {list(counts['none'])} with an empty mask")
        for what, c in counts.items():
            if any(v < -tol for v in c):
                problems.append(f"eval ({what}): {key}: negative counts {list(c)}")
            if whole_counts(key, what) and any(abs(v - round(v)) > 1e-3
                                               for v in c):
                problems.append(f"eval ({what}): {key}: counts {list(c)} of a "
                                "one-hot router are not whole numbers")
        if total <= 0:
            problems.append(f"eval: {key}: no token routed")
    summary = (f"eval loss_sum {outputs['all']['loss_sum'][2][0]:.7g} vs "
               f"{sum(ce):.7g}, correct {outputs['all']['correct'][2][0]:g}/{batch}, "
               f"{len(routing)} routing count outputs")
    return problems, summary


def check_unfused(args, spec, manifest, weights, batch, got, stem):
    """The --no-fuse build of `spec` against the fused outputs `got` of
    train_step on the same weights and batch, and infer's logits of both.
    Returns (problems, summary)."""
    problems = []
    unfused = stem + ".unfused.moec"
    batch_size = manifest["batch"]
    run([args.moec, "compile", spec, "--batch", str(batch_size), "--no-fuse",
         "-o", unfused])
    fused_ops = kernel_ops(args, spec, batch_size, [], stem)
    unfused_ops = kernel_ops(args, spec, batch_size, ["--no-fuse"],
                             stem + ".unfused")
    if not any(op.startswith("moe.routed_ffn") for op in fused_ops) and any(
            op == "moe.dispatch" for op in unfused_ops):
        kinds = spec_router_kinds(spec)
        if kinds - {"soft"}:
            problems.append("the default build fused no MoE layer "
                            f"(routers: {', '.join(sorted(kinds))})")
    if any(op.startswith("moe.routed_ffn") for op in unfused_ops):
        problems.append("--no-fuse still has moe.routed_ffn kernels")
    batch_path = stem + ".batch.safetensors"
    other = call_entry(args, unfused, "train_step", weights, batch_path,
                       stem + ".unfused.out.safetensors")
    grad_norms = [norm(v[2]) for k, v in got.items() if k.startswith("grad.")]
    floor = 1e-3 * max(grad_norms, default=0.0)
    worst, worst_key = 0.0, ""
    for key, (_, shape, values) in got.items():
        if key not in other:
            problems.append(f"--no-fuse has no output '{key}'")
            continue
        ref = other[key][2]
        if other[key][1] != shape:
            problems.append(f"'{key}': shape {shape} fused, {other[key][1]} unfused")
            continue
        if key == "correct":
            if list(values) != list(ref):
                problems.append(f"correct {values} fused, {ref} unfused")
            continue
        denom = max(norm(ref), floor if key.startswith("grad.") else 0.0)
        diff = norm([a - b for a, b in zip(values, ref)])
        err = diff / denom if denom > 0 else diff
        if err > worst:
            worst, worst_key = err, key
        if not err < args.unfused_tol:
            problems.append(f"'{key}': fused vs unfused relative error {err:.2e}")
    # infer: the logits of the batch's images.
    images = stem + ".images.safetensors"
    write_tensors(images, {"images": batch["images"]})
    fused_logits = call_entry(args, stem + ".moec", "infer", weights, images,
                              stem + ".infer.safetensors")
    unfused_logits = call_entry(args, unfused, "infer", weights, images,
                                stem + ".unfused.infer.safetensors")
    for key, (_, shape, values) in fused_logits.items():
        ref = unfused_logits.get(key, (None, None, []))[2]
        err = norm([a - b for a, b in zip(values, ref)]) / max(norm(ref), 1e-30)
        if len(ref) != len(values) or not err < args.unfused_tol:
            problems.append(f"infer '{key}': fused vs unfused relative error {err:.2e}")
        if err > worst:
            worst, worst_key = err, "infer." + key
    fused_layers = sum(op == "moe.routed_ffn_train" for op in fused_ops)
    return problems, (f"fused vs unfused: {fused_layers} fused layer(s), "
                      f"max rel diff {worst:.1e} ({worst_key})")


def kernel_ops(args, spec, batch_size, extra, stem):
    """The moe op of every call in the plan `moec compile --emit=plan`
    builds (all entry points)."""
    plan = stem + ".plan.mlir"
    run([args.moec, "compile", spec, "--batch", str(batch_size), "--emit=plan",
         "--quiet", "-o", plan] + extra)
    with open(plan) as f:
        return re.findall(r'moe\.op = "([a-z_.]+)"', f.read())


def spec_router_kinds(spec):
    with open(spec) as f:
        moe = json.load(f).get("moe") or {}
    kinds = {(moe.get("router") or {}).get("kind", "token-choice").replace("-", "_")}
    for layer in (moe.get("layers") or {}).values():
        if isinstance(layer, dict) and "router" in layer:
            kinds.add(layer["router"].get("kind", "token-choice").replace("-", "_"))
    return kinds


def check_spec(spec, args):
    name = os.path.splitext(os.path.basename(spec))[0]
    work = args.work
    model = os.path.join(work, name + ".moec")
    init = os.path.join(work, name + ".init.safetensors")
    weights = os.path.join(work, name + ".safetensors")
    batch_path = os.path.join(work, name + ".batch.safetensors")
    out_path = os.path.join(work, name + ".out.safetensors")
    fd_path = os.path.join(work, name + ".fd.safetensors")
    rng = random.Random(args.seed)

    batch_size = args.batch
    if batch_size is None:  # the artifact's batch is the spec's train batch
        with open(spec) as f:
            batch_size = int((json.load(f).get("train") or {}).get("batch", 128))
    run([args.moec, "compile", spec, "--batch", str(batch_size), "-o", model])
    run([args.moec_run, "init", model, "-o", init])
    write_f32_weights(weights, random_weights(rng, read_header(init)))
    manifest = read_manifest(model)
    entry = manifest.get("entries", {}).get("train_step")
    if entry is None:
        raise Fail(f"{model} has no train_step entry point "
                   f"(entries: {', '.join(manifest.get('entries', {}))})")
    noise_inputs = sorted(t["name"] for t in entry["inputs"]
                          if t.get("role") == "normal_noise")

    # A batch whose routing is decisive in float32.
    for attempt in range(args.tries):
        batch = make_batch(entry, manifest["classes"], rng)
        write_tensors(batch_path, batch)
        proc = run([args.reference, "loss", spec, weights, batch_path])
        ref = json.loads(proc.stdout)
        ignored = [ln for ln in proc.stderr.splitlines() if "is not read" in ln]
        if ignored:
            raise Fail("the artifact takes router noise that the reference "
                       "semantics do not use:\n  " + "\n  ".join(ignored))
        margin = ref["routing_margin"]
        if margin is None or margin >= args.min_margin:
            break
    else:
        raise Fail(f"no batch with routing margin >= {args.min_margin} in "
                   f"{args.tries} tries (last {margin:.2e})")

    if os.path.exists(fd_path):
        os.remove(fd_path)  # no stale output can pass
    got = call_entry(args, model, "train_step", weights, batch_path, out_path)
    per_tensor = args.per_tensor
    if per_tensor == "auto":
        # Cost: two forward passes of the batch per entry.
        count = sum(math.prod(p["shape"]) for p in manifest["params"])
        per_tensor = "all" if count * manifest["batch"] <= args.auto_all else "32"
    fd_summary = json.loads(run([args.reference, "fdgrad", spec, weights, batch_path,
                                 fd_path, "--per-tensor", per_tensor,
                                 "--seed", str(args.seed)]).stdout)
    fd = read_tensors(fd_path)

    problems = []

    def scalar(key):
        if key not in got:
            problems.append(f"output '{key}' missing")
            return math.nan
        v = got[key][2]
        if len(v) != 1:
            problems.append(f"output '{key}' has shape {got[key][1]}, expected []")
        return float(v[0])

    # Losses.
    loss_report = []
    for key in ("loss", "ce_loss", "aux_loss"):
        g, r = scalar(key), ref[key]
        err = abs(g - r) / abs(r) if r != 0 else abs(g)
        loss_report.append(f"{key} {g:.7g} vs {r:.7g} (rel {err:.1e})")
        # aux_loss can be tiny next to the loss: hold it to the loss scale.
        scale = abs(r) if key != "aux_loss" else max(abs(r), abs(ref["loss"]))
        if not abs(g - r) <= args.loss_tol * scale:
            problems.append(f"{key} {g!r} vs reference {r!r}")
    correct = scalar("correct")
    if correct != ref["correct"]:
        problems.append(f"correct {correct} vs reference {ref['correct']}")
    lr_used = scalar("lr_used")
    if lr_used != 0.0:
        problems.append(f"lr_used {lr_used} with lr = 0")

    # Gradients.
    params = [p["name"] for p in manifest["params"]]
    grads = {}
    for p in manifest["params"]:
        key = "grad." + p["name"]
        if key not in got:
            problems.append(f"output '{key}' missing")
            continue
        if got[key][1] != p["shape"]:
            problems.append(f"'{key}' has shape {got[key][1]}, parameter {p['shape']}")
            continue
        grads[p["name"]] = got[key][2]
    total = norm([x for g in grads.values() for x in g])
    gn = scalar("grad_norm")
    if not abs(gn - total) <= 1e-4 * max(total, 1e-30):
        problems.append(f"grad_norm {gn!r}, but the gradients' norm is {total!r}")
    extra = sorted(k for k in got if k.startswith("grad.") and k[5:] not in params)
    if extra:
        problems.append(f"gradients of unknown parameters: {', '.join(extra)}")

    sampled = {}
    for p in params:
        if p not in grads:
            continue
        if f"fd.{p}.index" not in fd:
            problems.append(f"the reference has no parameter '{p}'")
            continue
        idx = fd[f"fd.{p}.index"][2]
        val = fd[f"fd.{p}.value"][2]
        flag = fd[f"fd.{p}.flag"][2]
        keep = [j for j in range(len(idx)) if flag[j] == 0]
        sampled[p] = ([grads[p][idx[j]] for j in keep], [val[j] for j in keep])
    floor = 1e-3 * max((norm(f) for _, f in sampled.values()), default=0.0)
    worst, worst_name, floored = 0.0, "", []
    for p, (g, f) in sampled.items():
        if not all(math.isfinite(x) for x in g):
            problems.append(f"grad.{p}: non-finite values")
            continue
        denom = norm(f)
        if denom < floor:
            denom = floor
            floored.append(p)
        err = norm([a - b for a, b in zip(g, f)]) / denom if denom > 0 else 0.0
        if args.verbose:
            print(f"    grad.{p}: rel err {err:.2e} (|fd| {norm(f):.3e}, "
                  f"{len(f)} entries{', floored' if p in floored else ''})")
        if err > worst:
            worst, worst_name = err, p
        if not err < args.grad_tol:
            problems.append(f"grad.{p}: relative error {err:.2e} over {len(f)} "
                            f"sampled entries (|fd| {norm(f):.3e})")

    if not args.no_optimizer_check:
        problems += check_optimizer(args, manifest, entry, batch, weights, model,
                                    os.path.join(work, name))
    eval_summary = ""
    if not args.no_eval_check:
        eval_problems, eval_summary = check_eval(args, spec, manifest, weights, model,
                                                 os.path.join(work, name), rng)
        problems += eval_problems

    if not args.no_unfused_check:
        unfused_problems, unfused_summary = check_unfused(
            args, spec, manifest, weights, batch, got, os.path.join(work, name))
        problems += unfused_problems
        eval_summary = "; ".join(x for x in (eval_summary, unfused_summary) if x)

    entries = sum(len(f) for _, f in sampled.values())
    print(f"{'ok' if not problems else 'FAIL'}: {name}: " + "; ".join(loss_report) +
          f"; max grad rel err {worst:.2e} ({worst_name}) over {entries} FD entries "
          f"in {len(sampled)} tensors ({fd_summary['fd_flagged']} flagged); "
          f"routing margin {margin if margin is None else f'{margin:.1e}'}"
          + (f"; noise inputs: {', '.join(noise_inputs)}" if noise_inputs else "")
          + (f"; {eval_summary}" if eval_summary else ""))
    for p in problems:
        print(f"    {p}")
    return not problems, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--moec")
    ap.add_argument("--moec-run")
    ap.add_argument("--reference")
    ap.add_argument("--work", default=None)
    ap.add_argument("--batch", type=int, default=None,
                    help="compile batch (default: the spec's train.batch)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-tensor", default="auto",
                    help="entries per tensor for the finite differences: K, "
                    "'all', or 'auto' (all when parameters x batch is at "
                    "most --auto-all, else 32)")
    ap.add_argument("--auto-all", type=int, default=100000)
    ap.add_argument("--loss-tol", type=float, default=1e-5)
    ap.add_argument("--grad-tol", type=float, default=1e-3)
    ap.add_argument("--min-margin", type=float, default=1e-4)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None,
                    help="passed to moec-run call (default: not passed)")
    ap.add_argument("--no-optimizer-check", action="store_true",
                    help="skip the second train_step call (lr > 0) that checks "
                    "lr_used, updated.<param> and the optimizer state")
    ap.add_argument("--no-eval-check", action="store_true",
                    help="skip the eval entry point checks (four masks against "
                    "the reference's inference logits)")
    ap.add_argument("--no-unfused-check", action="store_true",
                    help="skip the comparison with the --no-fuse build")
    ap.add_argument("--unfused-tol", type=float, default=1e-5)
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    args.moec = args.moec or os.path.join(args.bin, "moec")
    args.moec_run = args.moec_run or os.path.join(args.bin, "moec-run")
    args.reference = args.reference or os.path.join(args.bin, "moec-reference")
    if args.work is None:
        import tempfile
        args.work = tempfile.mkdtemp(prefix="moec-check-grads-")
    os.makedirs(args.work, exist_ok=True)

    failed, worst = [], 0.0
    for spec in args.specs:
        name = os.path.splitext(os.path.basename(spec))[0]
        try:
            ok, err = check_spec(spec, args)
            worst = max(worst, err)
        except Fail as e:
            print(f"FAIL: {name}: {e}")
            ok = False
        if not ok:
            failed.append(name)
    print(f"{'PASS' if not failed else 'FAIL'}: {len(args.specs) - len(failed)}/"
          f"{len(args.specs)} specs; worst gradient relative error {worst:.2e} "
          f"(limit {args.grad_tol:g})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
