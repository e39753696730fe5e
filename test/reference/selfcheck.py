#!/usr/bin/env python3
"""Self-check for moec-reference.

    python3 selfcheck.py PATH/TO/moec-reference

Builds tiny ViT / ViMoE specs (one per router kind, plus dense, presets,
placement rules, activations, pooling modes, shared experts, exact routing
ties and capacity drops), writes random F32 weights (safetensors) and
images, runs moec-reference, and compares its logits with the independent
pure-python implementation below.  Also checks that bad inputs (missing
tensor, wrong shape, bad image file, bad spec) exit with status 1.

Exits non-zero on any mismatch (relative error > 1e-9).  Python standard
library only.
"""

import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

REL_TOL = 1e-9

PRESETS = {
    "vit-tiny": {"input": {"channels": 3, "height": 224, "width": 224},
                 "patch_size": 16, "width": 192, "depth": 12, "heads": 3,
                 "mlp_ratio": 4, "classes": 1000, "pooling": "cls"},
}
PRESETS["vit-small"] = dict(PRESETS["vit-tiny"], width=384, heads=6)
PRESETS["vit-base"] = dict(PRESETS["vit-tiny"], width=768, heads=12)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


# --------------------------------------------------------------------------
# Resolved configuration
# --------------------------------------------------------------------------

def layer_overrides(c, o):
    """The settings a "moe.layers" entry `o` changes, as keys of `c`. A
    router of another kind starts from that kind's defaults; an object
    capacity factor keeps the factors it does not give."""
    lc = {}
    for key, name in (("experts", "E"), ("top_k", "k"),
                      ("expert_hidden", "Hx"), ("shared_expert", "shared")):
        if key in o:
            lc[name] = o[key]
    cf = o.get("capacity_factor")
    if cf is not None:
        lc["cf"] = cf.get("eval", c["cf"]) if isinstance(cf, dict) else cf
    r = o.get("router")
    if r is not None:
        kind = r.get("kind", c["router"])
        same = kind == c["router"]
        lc["router"] = kind
        lc["iters"] = r.get("iterations", c["iters"] if same else 3)
        lc["slots"] = (r.get("slots_per_expert", c["slots"] if same else 1)
                       if kind == "soft" else 1)
    return lc


def layer_cfg(c, blk):
    """`c` with MoE block `blk`'s own settings."""
    return dict(c, **c.get("layer", {}).get(blk, {}))


def resolve(spec):
    model = {}
    if "extends" in spec:
        base = PRESETS[spec["extends"]]
        model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in spec.get("model", {}).items():
        if k == "input" and isinstance(model.get("input"), dict):
            model["input"].update(v)
        else:
            model[k] = v
    c = {}
    c["C"] = model["input"]["channels"]
    c["H"] = model["input"]["height"]
    c["W"] = model["input"]["width"]
    c["P"] = model["patch_size"]
    c["D"] = model["width"]
    c["L"] = model["depth"]
    c["heads"] = model["heads"]
    c["K"] = model["classes"]
    # llround: half away from zero (python's round() is banker's rounding).
    hm = model.get("mlp_ratio", 4) * c["D"]
    c["Hm"] = int(math.floor(hm + 0.5)) if hm >= 0 else -int(math.floor(-hm + 0.5))
    c["pool"] = model.get("pooling", "cls")
    c["act"] = model.get("activation", "gelu")
    c["eps"] = model.get("layer_norm_eps", 1e-6)
    c["moe_blocks"] = set()
    moe = spec.get("moe")
    if moe is not None:
        L = c["L"]
        pl = moe["placement"]
        if pl["rule"] == "every-n":
            n = pl["n"]
            c["moe_blocks"] = {i for i in range(L) if i % n == n - 1}
        elif pl["rule"] == "last-n":
            c["moe_blocks"] = {L - 1 - 2 * j for j in range(pl["n"])}
        else:
            c["moe_blocks"] = set(pl["blocks"])
        c["E"] = moe["experts"]
        c["k"] = moe.get("top_k", 1)
        c["Hx"] = moe.get("expert_hidden", c["Hm"])
        r = moe["router"]
        c["router"] = r["kind"]
        c["iters"] = r.get("iterations", 3)
        c["slots"] = r.get("slots_per_expert", 1) if r["kind"] == "soft" else 1
        cf = moe.get("capacity_factor", 1.0)
        c["cf"] = cf.get("eval", 1.0) if isinstance(cf, dict) else cf
        c["shared"] = moe.get("shared_expert", False)
        c["layer"] = {int(b): layer_overrides(c, o)
                      for b, o in moe.get("layers", {}).items()}
    c["T"] = (c["H"] // c["P"]) * (c["W"] // c["P"])
    c["S"] = c["T"] + (1 if c["pool"] == "cls" else 0)
    return c


def param_shapes(c):
    D, S = c["D"], c["S"]
    shapes = {
        "patch_embed.proj.weight": [c["C"] * c["P"] * c["P"], D],
        "patch_embed.proj.bias": [D],
        "pos_embed": [S, D],
        "norm.weight": [D], "norm.bias": [D],
        "head.weight": [D, c["K"]], "head.bias": [c["K"]],
    }
    if c["pool"] == "cls":
        shapes["cls_token"] = [D]
    for i in range(c["L"]):
        p = "blocks.%d." % i
        shapes[p + "norm1.weight"] = [D]
        shapes[p + "norm1.bias"] = [D]
        shapes[p + "attn.qkv.weight"] = [D, 3 * D]
        shapes[p + "attn.qkv.bias"] = [3 * D]
        shapes[p + "attn.proj.weight"] = [D, D]
        shapes[p + "attn.proj.bias"] = [D]
        shapes[p + "norm2.weight"] = [D]
        shapes[p + "norm2.bias"] = [D]
        if i in c["moe_blocks"]:
            lc = layer_cfg(c, i)
            E, H = lc["E"], lc["Hx"]
            shapes[p + "moe.router.weight"] = [D, E * lc["slots"]]
            shapes[p + "moe.experts.fc1.weight"] = [E, D, H]
            shapes[p + "moe.experts.fc1.bias"] = [E, H]
            shapes[p + "moe.experts.fc2.weight"] = [E, H, D]
            shapes[p + "moe.experts.fc2.bias"] = [E, D]
            if lc["shared"]:
                shapes[p + "moe.shared.fc1.weight"] = [D, H]
                shapes[p + "moe.shared.fc1.bias"] = [H]
                shapes[p + "moe.shared.fc2.weight"] = [H, D]
                shapes[p + "moe.shared.fc2.bias"] = [D]
        else:
            shapes[p + "mlp.fc1.weight"] = [D, c["Hm"]]
            shapes[p + "mlp.fc1.bias"] = [c["Hm"]]
            shapes[p + "mlp.fc2.weight"] = [c["Hm"], D]
            shapes[p + "mlp.fc2.bias"] = [D]
    return shapes


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def random_weights(c, rng, zero_router=False):
    w = {}
    for name, shape in param_shapes(c).items():
        n = numel(shape)
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            vals = [1.0 + rng.uniform(-0.3, 0.3) for _ in range(n)]
        elif zero_router and name.endswith("moe.router.weight"):
            vals = [0.0] * n
        elif name.endswith("router.weight"):
            vals = [rng.gauss(0.0, 1.5) for _ in range(n)]
        else:
            vals = [rng.gauss(0.0, 0.6) for _ in range(n)]
        w[name] = (shape, [f32(v) for v in vals])
    return w


def write_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    # Reverse order so data layout differs from name order.
    for name in sorted(tensors, reverse=True):
        shape, vals = tensors[name]
        blob = struct.pack("<%df" % len(vals), *vals)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


# --------------------------------------------------------------------------
# Pure-python model (lists of lists, double precision)
# --------------------------------------------------------------------------

def reshape(vals, shape):
    if len(shape) == 1:
        return list(vals)
    step = numel(shape[1:])
    return [reshape(vals[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def matvec(v, W, b=None):
    """v [in] . W [in][out] + b [out]"""
    out = [0.0] * len(W[0]) if b is None else list(b)
    for i, vi in enumerate(v):
        Wi = W[i]
        for o in range(len(out)):
            out[o] += vi * Wi[o]
    return out


def act_fn(name):
    if name == "gelu":
        return lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return lambda x: 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "relu":
        return lambda x: max(x, 0.0)
    if name == "silu":
        return lambda x: x / (1.0 + math.exp(-x))
    raise ValueError(name)


def layer_norm(v, w, b, eps):
    n = len(v)
    mu = sum(v) / n
    var = sum((a - mu) ** 2 for a in v) / n
    d = math.sqrt(var + eps)
    return [(a - mu) / d * w[i] + b[i] for i, a in enumerate(v)]


def softmax(v):
    m = max(v)
    e = [math.exp(a - m) for a in v]
    s = sum(e)
    return [a / s for a in e]


def ranked(v):
    """Indices sorted by descending value, ties by lower index."""
    return sorted(range(len(v)), key=lambda i: (-v[i], i))


class Stats:
    def __init__(self):
        self.routes = 0
        self.drops = 0


def ffn(v, W1, b1, W2, b2, act):
    return matvec([act(a) for a in matvec(v, W1, b1)], W2, b2)


def moe_layer(h, c, P, act, stats):
    S, D, E = len(h), c["D"], c["E"]
    Wr = P["moe.router.weight"]
    W1, B1 = P["moe.experts.fc1.weight"], P["moe.experts.fc1.bias"]
    W2, B2 = P["moe.experts.fc2.weight"], P["moe.experts.fc2.bias"]

    def expert(e, v):
        return ffn(v, W1[e], B1[e], W2[e], B2[e], act)

    y = [[0.0] * D for _ in range(S)]

    def accumulate(s, g, vec):
        for i in range(D):
            y[s][i] += g * vec[i]

    kind = c["router"]
    if kind in ("token-choice", "sinkhorn"):
        k = c["k"]
        G = [softmax(matvec(h[s], Wr)) for s in range(S)]
        Q = [list(r) for r in G]
        if kind == "sinkhorn":
            for _ in range(c["iters"]):
                for e in range(E):
                    col = sum(Q[s][e] for s in range(S))
                    for s in range(S):
                        Q[s][e] = Q[s][e] * ((S / E) / col)
                for s in range(S):
                    rs = sum(Q[s])
                    Q[s] = [q / rs for q in Q[s]]
        choices = [ranked(Q[s])[:k] for s in range(S)]
        cap = min(S, max(1, int(math.ceil(k * S * c["cf"] / E))))
        load = [0] * E
        for r in range(k):
            for s in range(S):
                e = choices[s][r]
                stats.routes += 1
                if load[e] >= cap:
                    stats.drops += 1
                    continue
                load[e] += 1
                accumulate(s, G[s][e], expert(e, h[s]))
    elif kind == "expert-choice":
        G = [softmax(matvec(h[s], Wr)) for s in range(S)]
        cap = min(S, max(1, int(math.ceil(S * c["cf"] / E))))
        for e in range(E):
            colv = [G[s][e] for s in range(S)]
            for s in ranked(colv)[:cap]:
                stats.routes += 1
                accumulate(s, G[s][e], expert(e, h[s]))
    elif kind == "soft":
        ps = c["slots"]
        J = E * ps
        logits = [matvec(h[s], Wr) for s in range(S)]
        combine = [softmax(logits[s]) for s in range(S)]
        dispatch_cols = [softmax([logits[s][j] for s in range(S)]) for j in range(J)]
        Y = []
        for j in range(J):
            X = [sum(dispatch_cols[j][s] * h[s][i] for s in range(S)) for i in range(D)]
            Y.append(expert(j // ps, X))
        for s in range(S):
            for j in range(J):
                accumulate(s, combine[s][j], Y[j])
    elif kind == "per-image":
        mean = [sum(h[s][i] for s in range(S)) / S for i in range(D)]
        G = softmax(matvec(mean, Wr))
        for e in ranked(G)[:c["k"]]:
            for s in range(S):
                stats.routes += 1
                accumulate(s, G[e], expert(e, h[s]))
    else:
        raise ValueError(kind)

    if c["shared"]:
        for s in range(S):
            z = ffn(h[s], P["moe.shared.fc1.weight"], P["moe.shared.fc1.bias"],
                    P["moe.shared.fc2.weight"], P["moe.shared.fc2.bias"], act)
            accumulate(s, 1.0, z)
    return y


def model_forward(c, weights, img, stats):
    Wt = {name: reshape(vals, shape) for name, (shape, vals) in weights.items()}
    act = act_fn(c["act"])
    C, H, W, P, D = c["C"], c["H"], c["W"], c["P"], c["D"]
    toks = []
    for py in range(H // P):
        for px in range(W // P):
            vec = []
            for ch in range(C):
                for dy in range(P):
                    for dx in range(P):
                        vec.append(img[ch * H * W + (py * P + dy) * W + px * P + dx])
            toks.append(matvec(vec, Wt["patch_embed.proj.weight"], Wt["patch_embed.proj.bias"]))
    if c["pool"] == "cls":
        toks = [list(Wt["cls_token"])] + toks
    x = [[a + b for a, b in zip(t, Wt["pos_embed"][s])] for s, t in enumerate(toks)]
    S = len(x)
    nh = c["heads"]
    dh = D // nh
    for blk in range(c["L"]):
        pre = "blocks.%d." % blk
        B = {n[len(pre):]: v for n, v in Wt.items() if n.startswith(pre)}
        h = [layer_norm(t, B["norm1.weight"], B["norm1.bias"], c["eps"]) for t in x]
        qkv = [matvec(t, B["attn.qkv.weight"], B["attn.qkv.bias"]) for t in h]
        heads_out = [[] for _ in range(S)]
        for j in range(nh):
            q = [r[j * dh:(j + 1) * dh] for r in qkv]
            kk = [r[D + j * dh:D + (j + 1) * dh] for r in qkv]
            vv = [r[2 * D + j * dh:2 * D + (j + 1) * dh] for r in qkv]
            for s in range(S):
                att = softmax([sum(a * b for a, b in zip(q[s], kk[t])) / math.sqrt(dh)
                               for t in range(S)])
                heads_out[s] += [sum(att[t] * vv[t][i] for t in range(S)) for i in range(dh)]
        proj = [matvec(o, B["attn.proj.weight"], B["attn.proj.bias"]) for o in heads_out]
        x = [[a + b for a, b in zip(x[s], proj[s])] for s in range(S)]
        h2 = [layer_norm(t, B["norm2.weight"], B["norm2.bias"], c["eps"]) for t in x]
        if blk in c["moe_blocks"]:
            f = moe_layer(h2, layer_cfg(c, blk), B, act, stats)
        else:
            f = [ffn(t, B["mlp.fc1.weight"], B["mlp.fc1.bias"],
                     B["mlp.fc2.weight"], B["mlp.fc2.bias"], act) for t in h2]
        x = [[a + b for a, b in zip(x[s], f[s])] for s in range(S)]
    xn = [layer_norm(t, Wt["norm.weight"], Wt["norm.bias"], c["eps"]) for t in x]
    if c["pool"] == "cls":
        feat = xn[0]
    else:
        feat = [sum(xn[s][i] for s in range(S)) / S for i in range(D)]
    return matvec(feat, Wt["head.weight"], Wt["head.bias"])


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def base_model(**kw):
    m = {"input": {"channels": 2, "height": 4, "width": 4}, "patch_size": 2,
         "width": 4, "depth": 2, "heads": 2, "mlp_ratio": 2, "classes": 3}
    m.update(kw)
    return m


def moe(router, **kw):
    m = {"placement": {"rule": "every-n", "n": 1}, "experts": 3,
         "router": router}
    m.update(kw)
    return m


def bias_expert0(w, bias):
    """norm2.bias of block 0 pushes every token along feature 0, and router
    column 0 rewards it: most tokens prefer expert 0."""
    w["blocks.0.norm2.bias"] = ([4], [bias, 0.0, 0.0, 0.0])
    shape, vals = w["blocks.0.moe.router.weight"]
    vals = list(vals)
    vals[0] = 2.0
    w["blocks.0.moe.router.weight"] = (shape, vals)


CASES = [
    # name, spec, options
    ("dense-cls-gelu", {"model": base_model()}, {}),
    ("dense-mean-silu-eps", {"model": base_model(pooling="mean", activation="silu",
                                                  layer_norm_eps=1e-3, mlp_ratio=1.5)}, {}),
    ("preset-vit-tiny-override", {
        "extends": "vit-tiny",
        "model": {"input": {"height": 4, "width": 4}, "patch_size": 2, "width": 4,
                  "depth": 2, "heads": 2, "classes": 3}}, {}),
    ("token-choice-k2-drops-shared", {
        "model": base_model(pooling="mean", activation="relu"),
        "moe": moe({"kind": "token-choice", "noise_std": 1.0}, top_k=2,
                   capacity_factor={"train": 2.0, "eval": 0.5},
                   shared_expert=True, expert_hidden=5)},
     {"expect_drops": True}),
    ("token-choice-k1-lastn", {
        "model": base_model(depth=3),
        "moe": moe({"kind": "token-choice"}, top_k=1, capacity_factor=1.25,
                   placement={"rule": "last-n", "n": 2})}, {}),
    ("token-choice-ties", {
        "model": base_model(),
        "moe": moe({"kind": "token-choice"}, top_k=2, capacity_factor=0.7)},
     {"zero_router": True, "expect_drops": True}),
    ("sinkhorn-k2-gelu-tanh", {
        "model": base_model(activation="gelu_tanh"),
        "moe": moe({"kind": "sinkhorn", "iterations": 5}, top_k=2,
                   capacity_factor=1.0, experts=4)}, {}),
    ("sinkhorn-default-iters-drops", {
        "model": base_model(pooling="mean"),
        "moe": moe({"kind": "sinkhorn"}, top_k=1, capacity_factor=0.5,
                   placement={"rule": "blocks", "blocks": [0]})},
     {"expect_drops": True}),
    # Tokens biased towards expert 0 so that the number of Sinkhorn
    # iterations changes the routing (checked by "sensitive" below).
    ("sinkhorn-iterations-matter", {
        "model": base_model(input={"channels": 1, "height": 8, "width": 8}, depth=1),
        "moe": moe({"kind": "sinkhorn", "iterations": 2}, top_k=2,
                   capacity_factor=2.0, experts=4)},
     {"seed": 6, "post": lambda w: bias_expert0(w, 4.0),
      "sensitive": [("iterations 1", lambda c: dict(c, iters=1)),
                    ("iterations 3", lambda c: dict(c, iters=3))]}),
    ("sinkhorn-ties", {
        "model": base_model(),
        "moe": moe({"kind": "sinkhorn", "iterations": 2}, top_k=2, capacity_factor=0.6)},
     {"zero_router": True, "expect_drops": True}),
    ("expert-choice", {
        "model": base_model(activation="silu"),
        "moe": moe({"kind": "expert-choice"}, capacity_factor=0.75, top_k=2,
                   shared_expert=True)}, {}),
    ("expert-choice-ties", {
        "model": base_model(pooling="mean"),
        "moe": moe({"kind": "expert-choice"}, capacity_factor=1.0)},
     {"zero_router": True}),
    ("soft-2-slots", {
        "model": base_model(),
        "moe": moe({"kind": "soft", "slots_per_expert": 2},
                   placement={"rule": "blocks", "blocks": [1]}, expert_hidden=3)}, {}),
    ("soft-default-slots-mean", {
        "model": base_model(pooling="mean", activation="gelu_tanh"),
        "moe": moe({"kind": "soft"}, experts=2, shared_expert=True)}, {}),
    ("per-image-k1", {
        "model": base_model(pooling="mean"),
        "moe": moe({"kind": "per-image"},
                   placement={"rule": "every-n", "n": 2})}, {}),
    # Per-layer settings: token-choice top-2 in block 0, expert-choice with
    # its own experts, hidden size, shared expert and eval capacity in
    # block 1, Soft MoE with 2 experts x 2 slots in block 2.
    ("per-layer-routers", {
        "model": base_model(depth=3),
        "moe": moe({"kind": "token-choice"}, top_k=2, capacity_factor=0.75,
                   layers={"1": {"router": {"kind": "expert-choice"},
                                 "experts": 4, "expert_hidden": 3,
                                 "shared_expert": True,
                                 "capacity_factor": {"eval": 1.5}},
                           "2": {"router": {"kind": "soft",
                                            "slots_per_expert": 2},
                                 "experts": 2}})},
     {"expect_drops": True}),
    ("per-image-k2-ties", {
        "model": base_model(),
        "moe": moe({"kind": "per-image"}, top_k=2, experts=4)},
     {"zero_router": True}),
]


def read_floats(path, fmt):
    with open(path, "rb") as f:
        data = f.read()
    size = struct.calcsize("<" + fmt)
    return list(struct.unpack("<%d%s" % (len(data) // size, fmt), data))


def rel_err(a, b):
    return abs(a - b) / max(abs(b), 1e-6)


def run_case(exe, tmp, name, spec, opts, seed):
    rng = random.Random(opts.get("seed", seed))
    c = resolve(spec)
    weights = random_weights(c, rng, zero_router=opts.get("zero_router", False))
    if "post" in opts:
        opts["post"](weights)
    n_img = 3
    per = c["C"] * c["H"] * c["W"]
    imgs = [[f32(rng.uniform(-1.0, 1.0)) for _ in range(per)] for _ in range(n_img)]
    sp = os.path.join(tmp, name + ".json")
    wp = os.path.join(tmp, name + ".safetensors")
    ip = os.path.join(tmp, name + ".f32")
    op32 = os.path.join(tmp, name + ".out32")
    op64 = os.path.join(tmp, name + ".out64")
    spec = dict(spec, name=name, train={"epochs": 1}, data={"dataset": "x"})
    with open(sp, "w") as f:
        json.dump(spec, f)
    write_safetensors(wp, weights)
    with open(ip, "wb") as f:
        for img in imgs:
            f.write(struct.pack("<%df" % per, *img))
    for args in ([exe, sp, wp, ip, op32], [exe, "--f64", sp, wp, ip, op64]):
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            print("FAIL %s: %s exited %d: %s" % (name, " ".join(args), r.returncode, r.stderr))
            return False
    got32 = read_floats(op32, "f")
    got64 = read_floats(op64, "d")
    stats = Stats()
    want = []
    for img in imgs:
        want += model_forward(c, weights, img, stats)
    ok = True
    if len(got64) != len(want) or len(got32) != len(want):
        print("FAIL %s: got %d/%d logits, want %d" % (name, len(got32), len(got64), len(want)))
        return False
    worst = max(rel_err(a, b) for a, b in zip(got64, want))
    if worst > REL_TOL:
        print("FAIL %s: max relative error %.3g > %g" % (name, worst, REL_TOL))
        ok = False
    # f32 output: the f64 value rounded to f32 (one-ulp slack for ties of
    # the python double that differ in the last bits).
    for a, b in zip(got32, want):
        if abs(a - f32(b)) > abs(f32(b)) * 2.0 ** -23 + 1e-30:
            print("FAIL %s: f32 output %r vs %r" % (name, a, b))
            ok = False
            break
    # The case must be able to tell the configured semantics from nearby
    # alternatives (else it checks nothing).
    for desc, alter in opts.get("sensitive", []):
        alt = []
        for img in imgs:
            alt += model_forward(alter(c), weights, img, Stats())
        if alt == want:
            print("FAIL %s: case does not distinguish %s" % (name, desc))
            ok = False
    if opts.get("expect_drops") and stats.drops == 0:
        print("FAIL %s: case meant to exercise capacity drops has none" % name)
        ok = False
    if ok:
        extra = ""
        if "moe" in spec:
            extra = " (routes %d, dropped %d)" % (stats.routes, stats.drops)
        print("ok   %-30s max rel err %.2e%s" % (name, worst, extra))
    return ok


def expect_error(exe, tmp, name, args, what):
    r = subprocess.run([exe] + args, capture_output=True, text=True)
    if r.returncode != 1 or what not in r.stderr:
        print("FAIL error-%s: exit %d, stderr %r (want exit 1 mentioning %r)"
              % (name, r.returncode, r.stderr, what))
        return False
    print("ok   error-%-24s %s" % (name, r.stderr.strip()))
    return True


def error_cases(exe, tmp, rng):
    spec = {"model": base_model(),
            "moe": moe({"kind": "token-choice"}, placement={"rule": "blocks", "blocks": [1]})}
    c = resolve(spec)
    sp = os.path.join(tmp, "err.json")
    with open(sp, "w") as f:
        json.dump(spec, f)
    good = random_weights(c, rng)
    per = c["C"] * c["H"] * c["W"]
    ip = os.path.join(tmp, "err.f32")
    with open(ip, "wb") as f:
        f.write(struct.pack("<%df" % per, *([0.5] * per)))
    out = os.path.join(tmp, "err.out")
    ok = True

    missing = dict(good)
    del missing["blocks.1.moe.experts.fc2.bias"]
    wp = os.path.join(tmp, "missing.safetensors")
    write_safetensors(wp, missing)
    ok &= expect_error(exe, tmp, "missing-tensor", [sp, wp, ip, out],
                       "blocks.1.moe.experts.fc2.bias")

    bad = dict(good)
    bad["blocks.0.attn.proj.weight"] = ([2, 8], good["blocks.0.attn.proj.weight"][1])
    wp = os.path.join(tmp, "shape.safetensors")
    write_safetensors(wp, bad)
    ok &= expect_error(exe, tmp, "wrong-shape", [sp, wp, ip, out], "blocks.0.attn.proj.weight")

    wp = os.path.join(tmp, "good.safetensors")
    write_safetensors(wp, good)
    ip2 = os.path.join(tmp, "short.f32")
    with open(ip2, "wb") as f:
        f.write(struct.pack("<%df" % (per + 1), *([0.5] * (per + 1))))
    ok &= expect_error(exe, tmp, "image-size", [sp, wp, ip2, out], "short.f32")

    trunc = os.path.join(tmp, "trunc.safetensors")
    with open(wp, "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[:-16])
    ok &= expect_error(exe, tmp, "truncated-weights", [sp, trunc, ip, out], "trunc.safetensors")

    sp2 = os.path.join(tmp, "badspec.json")
    with open(sp2, "w") as f:
        f.write('{"model": {"width": 4')
    ok &= expect_error(exe, tmp, "bad-spec-json", [sp2, wp, ip, out], "badspec.json")

    ok &= expect_error(exe, tmp, "missing-file", [sp, os.path.join(tmp, "nope"), ip, out], "nope")
    return ok


# --------------------------------------------------------------------------
# Training mode (loss): the noise-free forward at the train capacity, with
# the label-smoothed cross-entropy, against the python model above. The
# auxiliary losses and router noise are checked against PyTorch autograd by
# bench/validate_reference_grads.py.
# --------------------------------------------------------------------------

def write_batch(path, c, images, labels, extra=None):
    """images: list of flat CHW lists; labels: ints (I32); extra: {name:
    (dtype, shape, values)}."""
    tensors = {"images": ("F32", [len(images), c["C"], c["H"], c["W"]],
                          [v for im in images for v in im]),
               "labels": ("I32", [len(labels)], labels)}
    tensors.update(extra or {})
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, vals) in tensors.items():
        blob = struct.pack("<%d%s" % (len(vals), "i" if dtype == "I32" else "f"), *vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


TRAIN_CASES = [
    # name, moe section (capacity train != eval), label smoothing
    ("train-token-choice-drops", moe({"kind": "token-choice"}, top_k=2,
                                      capacity_factor={"train": 0.5, "eval": 4.0}), 0.1),
    ("train-expert-choice", moe({"kind": "expert-choice"},
                                capacity_factor={"train": 0.6, "eval": 2.0}), 0.0),
    ("train-sinkhorn", moe({"kind": "sinkhorn", "iterations": 2}, top_k=2,
                           capacity_factor={"train": 0.7}), 0.3),
    ("train-soft", moe({"kind": "soft", "slots_per_expert": 2}), 0.1),
    ("train-per-image", moe({"kind": "per-image"}, top_k=2, shared_expert=True), 0.1),
]


def train_cases(exe, tmp, rng):
    ok = True
    for name, moe_sec, eps in TRAIN_CASES:
        spec = {"name": name, "model": base_model(), "moe": moe_sec,
                "train": {"label_smoothing": eps}}
        c = resolve(spec)
        cf = moe_sec.get("capacity_factor", 1.0)
        if isinstance(cf, dict):
            c["cf"] = cf.get("train", 1.0)  # training capacity
        weights = random_weights(c, rng)
        per = c["C"] * c["H"] * c["W"]
        imgs = [[f32(rng.uniform(-1.0, 1.0)) for _ in range(per)] for _ in range(3)]
        labels = [rng.randrange(c["K"]) for _ in imgs]
        sp, wp, bp = (os.path.join(tmp, name + ext) for ext in (".json", ".safetensors",
                                                                 ".batch"))
        with open(sp, "w") as f:
            json.dump(spec, f)
        write_safetensors(wp, weights)
        write_batch(bp, c, imgs, labels)
        r = subprocess.run([exe, "loss", sp, wp, bp], capture_output=True, text=True)
        if r.returncode != 0:
            print("FAIL %s: exited %d: %s" % (name, r.returncode, r.stderr))
            ok = False
            continue
        got = json.loads(r.stdout)
        stats = Stats()
        ce, correct = 0.0, 0
        for img, lab in zip(imgs, labels):
            z = model_forward(c, weights, img, stats)
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            ce -= sum((eps / c["K"] + (1 - eps) * (k == lab)) * (z[k] - lse)
                      for k in range(c["K"]))
            correct += max(range(c["K"]), key=lambda k: (z[k], -k)) == lab
        ce /= len(imgs)
        err = rel_err(got["ce_loss"], ce)
        bad = err > REL_TOL or got["correct"] != correct or got["aux_loss"] != 0 or \
            got["loss"] != got["ce_loss"]
        if isinstance(cf, dict):
            # The case must tell the train capacity from the eval one.
            c_eval = dict(c, cf=cf.get("eval", 1.0))
            if all(model_forward(c_eval, weights, img, Stats()) ==
                   model_forward(c, weights, img, Stats()) for img in imgs):
                print("FAIL %s: train and eval capacity give the same logits" % name)
                bad = True
        print("%s %-30s ce_loss rel err %.2e, correct %d/%d (dropped %d)"
              % ("FAIL" if bad else "ok  ", name, err, got["correct"], correct, stats.drops))
        ok &= not bad
    return ok


def train_error_cases(exe, tmp, rng):
    spec = {"name": "errt", "model": base_model(),
            "moe": moe({"kind": "token-choice", "noise_std": 1.0},
                       placement={"rule": "blocks", "blocks": [1]})}
    c = resolve(spec)
    sp = os.path.join(tmp, "errt.json")
    with open(sp, "w") as f:
        json.dump(spec, f)
    wp = os.path.join(tmp, "errt.safetensors")
    write_safetensors(wp, random_weights(c, rng))
    per = c["C"] * c["H"] * c["W"]
    img = [[0.5] * per] * 2
    noise = ("F32", [2, c["S"], c["E"]], [0.1] * (2 * c["S"] * c["E"]))
    ok = True
    bp = os.path.join(tmp, "nonoise.batch")
    write_batch(bp, c, img, [0, 1])
    ok &= expect_error(exe, tmp, "loss-missing-noise", ["loss", sp, wp, bp],
                       "noise.blocks.1.moe")
    bp = os.path.join(tmp, "badlabel.batch")
    write_batch(bp, c, img, [0, c["K"]], {"noise.blocks.1.moe": noise})
    ok &= expect_error(exe, tmp, "loss-label-range", ["loss", sp, wp, bp], "is not in [0, 3)")
    bp = os.path.join(tmp, "good.batch")
    write_batch(bp, c, img, [0, 1], {"noise.blocks.1.moe": noise})
    ok &= expect_error(exe, tmp, "fdgrad-per-tensor", ["fdgrad", sp, wp, bp,
                       os.path.join(tmp, "fd.out"), "--per-tensor", "x"], "--per-tensor")
    sp2 = os.path.join(tmp, "errt-sc.json")
    with open(sp2, "w") as f:
        json.dump(dict(spec, moe=dict(spec["moe"], super_class_map=[0, 1, 2])), f)
    ok &= expect_error(exe, tmp, "super-class-router", ["loss", sp2, wp, bp], "per-image")
    # fdgrad writes index / value / flag per parameter.
    fd = os.path.join(tmp, "fd.safetensors")
    r = subprocess.run([exe, "fdgrad", sp, wp, bp, fd, "--per-tensor", "2"],
                       capture_output=True, text=True)
    names = set()
    if r.returncode == 0:
        with open(fd, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            names = set(json.loads(f.read(n))) - {"__metadata__"}
    want = {"fd.%s.%s" % (p, k) for p in param_shapes(c) for k in ("index", "value", "flag")}
    if r.returncode != 0 or names != want:
        print("FAIL fdgrad-output: exit %d, %s" % (r.returncode, r.stderr.strip()
                                                   or sorted(names ^ want)[:4]))
        ok = False
    else:
        print("ok   fdgrad-output                  %d tensors" % len(names))
    return ok


def main():
    if len(sys.argv) != 2:
        print("usage: selfcheck.py PATH/TO/moec-reference", file=sys.stderr)
        return 2
    exe = os.path.abspath(sys.argv[1])
    ok = True
    with tempfile.TemporaryDirectory(prefix="moec-ref-selfcheck-") as tmp:
        for i, (name, spec, opts) in enumerate(CASES):
            ok &= run_case(exe, tmp, name, spec, opts, 1000 + i)
        ok &= error_cases(exe, tmp, random.Random(7))
        ok &= train_cases(exe, tmp, random.Random(11))
        ok &= train_error_cases(exe, tmp, random.Random(13))
    print("selfcheck: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
