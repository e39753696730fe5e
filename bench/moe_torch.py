#!/usr/bin/env python3
"""A PyTorch implementation of the moec ViMoE forward pass (inference only).

The model is built from a moec JSON spec and loads moec's safetensors
weights. Its semantics are those of test/reference/README.md (the fp64
`moec-reference`): dense weights are stored [in, out] and y = x @ W + b;
every image is its own routing group. Everything runs batched over images
in float32 (float64 with --f64), in eval mode, without autograd.

Library use:
    spec = parse_spec("examples/vimoe-tiny-fmnist.json")
    model = ViMoE(spec, read_safetensors("w.safetensors"))
    logits = model(images)           # images: [N, C, H, W] float32

Command line (used by bench/infer_vs_pytorch.py, which runs it in a child
process with OPENBLAS_CORETYPE unset):
    moe_torch.py logits SPEC W.safetensors IMAGES.f32 OUT.f32
                 [--batch B] [--threads T] [--f64]
    moe_torch.py randomize IN.safetensors OUT.safetensors [--seed S]
    moe_torch.py serve SPEC W.safetensors IMAGES.f32 --batch B --threads T
                 [--warmup N]   (timing server: reads 'time' / 'quit' lines)
    moe_torch.py info           (torch version, BLAS, threads as JSON)
"""

import argparse
import json
import math
import os
import struct
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # parse_spec and the spec helpers work without torch
    torch = F = None

if torch is not None:
    _ST_DTYPES_INIT = {"F32": (torch.float32, 4), "F64": (torch.float64, 8),
                       "I32": (torch.int32, 4)}


def ensure_torch_python(passive=False):
    """Re-executes the running script under a Python that can import torch
    (this one, else /usr/bin/python3) and without OPENBLAS_CORETYPE
    (/work/shared/CPU-NOTES.md: it forces OpenBLAS onto its AVX2 kernels).
    With `passive`, also with OMP_WAIT_POLICY=PASSIVE unless it is set:
    libgomp's spinning threads and OpenBLAS's fight over 2 cores otherwise
    (up to 10x slower training, see bench/README.md).
    The one exception: MOEC_OPENBLAS_CORETYPE=CORE runs OpenBLAS with
    OPENBLAS_CORETYPE=CORE (bench/step_vs_torch.py picks the core OpenBLAS
    0.3.21 has for this CPU, which it may not detect itself)."""
    py = sys.executable
    if torch is None:
        py = "/usr/bin/python3"
        if os.path.realpath(sys.executable) == os.path.realpath(py):
            sys.exit("error: PyTorch is not installed (bench/setup.sh)")
    want_passive = passive and "OMP_WAIT_POLICY" not in os.environ
    core = os.environ.get("MOEC_OPENBLAS_CORETYPE")
    if (py != sys.executable
            or os.environ.get("OPENBLAS_CORETYPE") != core or want_passive):
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if core:
            env["OPENBLAS_CORETYPE"] = core
        if want_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execve(py, [py] + sys.argv, env)


# ---------------------------------------------------------------------------
# Safetensors, with the standard library and torch
# ---------------------------------------------------------------------------


# safetensors dtype -> (torch dtype, bytes per element)
_ST_DTYPES = _ST_DTYPES_INIT if torch is not None else {}


def read_safetensors(path, all_dtypes=False):
    """Returns {name: float32 tensor} for every F32 tensor of `path` (with
    all_dtypes: also I32 and F64 tensors, as int32 / float64)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header size {n} exceeds the file size")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None or (info["dtype"] != "F32" and not all_dtypes):
            raise ValueError(f"{path}: tensor '{name}' has dtype {info['dtype']}, "
                             "only F32 is supported")
        tdt, size = dt
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(v) for v in info["data_offsets"])
        numel = math.prod(shape)
        if end - begin != size * numel or base + end > len(data):
            raise ValueError(f"{path}: tensor '{name}': bad data_offsets")
        if numel == 0:
            out[name] = torch.zeros(shape, dtype=tdt)
            continue
        # bytearray copy: writable and aligned for torch.frombuffer.
        buf = bytearray(data[base + begin:base + end])
        t = torch.frombuffer(buf, dtype=tdt)
        if sys.byteorder != "little":
            t = t.byteswap()  # pragma: no cover
        out[name] = t.reshape(shape).clone()
    return out


def write_safetensors(path, tensors):
    """Writes {name: tensor} as safetensors (names in sorted order): int32
    tensors as I32, float64 tensors as F64, everything else as F32."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype == torch.int32:
            dtype, raw = "I32", t.numpy().astype("<i4").tobytes()
        elif t.dtype == torch.float64:
            dtype, raw = "F64", t.numpy().astype("<f8").tobytes()
        else:
            dtype, raw = "F32", t.to(torch.float32).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)


# ---------------------------------------------------------------------------
# Spec (the subset read by moec-reference)
# ---------------------------------------------------------------------------

PRESETS = {
    "vit-tiny": {"width": 192, "heads": 3},
    "vit-small": {"width": 384, "heads": 6},
    "vit-base": {"width": 768, "heads": 12},
}


def _preset(name):
    if name not in PRESETS:
        raise ValueError(f"spec: unknown preset '{name}' in 'extends'")
    m = {"input": {"channels": 3, "height": 224, "width": 224}, "patch_size": 16,
         "width": 192, "depth": 12, "heads": 3, "mlp_ratio": 4, "classes": 1000,
         "pooling": "cls"}
    m.update(PRESETS[name])
    return m


def parse_spec(path_or_dict):
    """The model description as a flat dict (see test/reference/README.md)."""
    if isinstance(path_or_dict, dict):
        root = path_or_dict
    else:
        with open(path_or_dict) as f:
            root = json.load(f)
    model = _preset(root["extends"]) if root.get("extends") else {}
    for key, val in (root.get("model") or {}).items():
        if key == "input" and isinstance(val, dict) and isinstance(model.get("input"), dict):
            model["input"] = {**model["input"], **val}
        else:
            model[key] = val
    inp = model["input"]
    s = {
        "C": int(inp["channels"]), "H": int(inp["height"]), "W": int(inp["width"]),
        "P": int(model["patch_size"]), "D": int(model["width"]),
        "L": int(model["depth"]), "heads": int(model["heads"]),
        "K": int(model["classes"]),
        "pooling": model.get("pooling", "cls"),
        "activation": model.get("activation", "gelu"),
        "eps": float(model.get("layer_norm_eps", 1e-6)),
        "name": root.get("name", ""),
        "data": root.get("data") or {},
        "train": root.get("train") or {},
        "label_smoothing": float((root.get("train") or {}).get("label_smoothing", 0.0)),
    }
    # llround: round half away from zero.
    hm = float(model.get("mlp_ratio", 4)) * s["D"]
    s["Hm"] = int(math.floor(hm + 0.5)) if hm >= 0 else -int(math.floor(-hm + 0.5))
    if s["pooling"] not in ("cls", "mean"):
        raise ValueError(f"spec: unknown pooling '{s['pooling']}'")
    if s["activation"] not in ("gelu", "gelu_tanh", "relu", "silu"):
        raise ValueError(f"spec: unknown activation '{s['activation']}'")
    if s["H"] % s["P"] or s["W"] % s["P"] or s["D"] % s["heads"]:
        raise ValueError("spec: image size must be a multiple of patch_size and "
                         "width a multiple of heads")
    s["T"] = (s["H"] // s["P"]) * (s["W"] // s["P"])
    s["S"] = s["T"] + (1 if s["pooling"] == "cls" else 0)

    moe = root.get("moe")
    s["moe"] = None
    if moe:
        if moe.get("layers"):
            raise ValueError("spec: per-layer MoE settings (moe.layers) are not "
                             "supported by the PyTorch baseline")
        r = moe["router"]
        cf = moe.get("capacity_factor", 1.0)
        cf_train = cf
        if isinstance(cf, dict):
            cf, cf_train = cf.get("eval", 1.0), cf.get("train", 1.0)
        aux = moe.get("aux_loss") or {}
        m = {
            "E": int(moe["experts"]), "k": int(moe.get("top_k", 1)),
            "H": int(moe.get("expert_hidden", s["Hm"])),
            "shared": bool(moe.get("shared_expert", False)),
            "cf": float(cf), "router": r["kind"],
            "iterations": int(r.get("iterations", 3)),
            "slots": int(r.get("slots_per_expert", 1)),
            # Training mode (ViMoETrain).
            "cf_train": float(cf_train),
            "noise_std": float(r.get("noise_std", 0.0)),
            "aux": {key: float(aux.get(key, 0.0))
                    for key in ("importance", "load", "balance", "z_loss",
                                "super_class")},
            "super_class_map": moe.get("super_class_map"),
        }
        if m["super_class_map"] is not None and "super_class" not in aux:
            m["aux"]["super_class"] = 0.3
        if m["router"] not in ("token-choice", "expert-choice", "soft", "per-image",
                               "sinkhorn"):
            raise ValueError(f"spec: unknown router kind '{m['router']}'")
        if m["router"] != "soft":
            m["slots"] = 1
        pl = moe["placement"]
        L = s["L"]
        if pl["rule"] == "every-n":
            n = int(pl["n"])
            blocks = {i for i in range(L) if i % n == n - 1}
        elif pl["rule"] == "last-n":
            blocks = {L - 1 - 2 * j for j in range(int(pl["n"]))}
            if min(blocks) < 0:
                raise ValueError("spec: placement last-n needs more blocks")
        elif pl["rule"] == "blocks":
            blocks = {int(b) for b in pl["blocks"]}
        else:
            raise ValueError(f"spec: unknown placement rule '{pl['rule']}'")
        m["blocks"] = blocks
        s["moe"] = m
    return s


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def _activation(name):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    return F.silu


def stable_rank(g):
    """rank[..., e] = #{e' : g[e'] > g[e] or (g[e'] == g[e] and e' < e)}.

    The descending rank with ties going to the lower index, along the last
    dimension (rank < k <=> e is among the top k, as std::stable_sort does).
    """
    n = g.shape[-1]
    idx = torch.arange(n, device=g.device)
    lower = idx.unsqueeze(0) < idx.unsqueeze(1)  # [e, e'] = e' < e
    gx = g.unsqueeze(-1)  # [..., e, 1]
    ge = g.unsqueeze(-2)  # [..., 1, e']
    beats = (ge > gx) | ((ge == gx) & lower)
    return beats.sum(-1)


def capacity(k, S, cf, E):
    """C = min(S, max(1, ceil(k*S*cf/E))), evaluated in double in that order."""
    return min(S, max(1, int(math.ceil(float(k) * float(S) * cf / float(E)))))


class ViMoE:
    """The moec ViT / ViMoE forward pass; call it on [N, C, H, W] images."""

    def __init__(self, spec, weights, dtype=None, native_mha=None):
        self.s = spec if isinstance(spec, dict) else parse_spec(spec)
        s = self.s
        dtype = torch.float32 if dtype is None else dtype
        self.dtype = dtype
        self.act = _activation(s["activation"])
        if native_mha is None:
            native_mha = hasattr(torch, "_native_multi_head_attention")
        self.native_mha = native_mha
        # When a [B] tensor, forward() lowers it to each image's smallest
        # routing margin (see _note_margin).
        self.margin = None
        D = s["D"]

        def get(name, shape):
            if name not in weights:
                raise KeyError(f"missing tensor '{name}' (expected shape {shape})")
            t = weights[name]
            if list(t.shape) != list(shape):
                raise ValueError(f"tensor '{name}' has shape {list(t.shape)}, "
                                 f"expected {list(shape)}")
            return t.to(dtype).contiguous()

        self.patch_w = get("patch_embed.proj.weight", [s["C"] * s["P"] ** 2, D])
        self.patch_b = get("patch_embed.proj.bias", [D])
        self.cls = get("cls_token", [D]) if s["pooling"] == "cls" else None
        self.pos = get("pos_embed", [s["S"], D])
        self.blocks = []
        moe = s["moe"]
        for i in range(s["L"]):
            p = f"blocks.{i}."
            b = {
                "n1w": get(p + "norm1.weight", [D]), "n1b": get(p + "norm1.bias", [D]),
                "qkvw": get(p + "attn.qkv.weight", [D, 3 * D]),
                "qkvb": get(p + "attn.qkv.bias", [3 * D]),
                "projw": get(p + "attn.proj.weight", [D, D]),
                "projb": get(p + "attn.proj.bias", [D]),
                "n2w": get(p + "norm2.weight", [D]), "n2b": get(p + "norm2.bias", [D]),
                "moe": bool(moe) and i in moe["blocks"],
            }
            if native_mha:
                b["qkvwT"] = b["qkvw"].t().contiguous()
                b["projwT"] = b["projw"].t().contiguous()
            if not b["moe"]:
                Hm = s["Hm"]
                b["w1"] = get(p + "mlp.fc1.weight", [D, Hm])
                b["b1"] = get(p + "mlp.fc1.bias", [Hm])
                b["w2"] = get(p + "mlp.fc2.weight", [Hm, D])
                b["b2"] = get(p + "mlp.fc2.bias", [D])
            else:
                E, H, J = moe["E"], moe["H"], moe["E"] * moe["slots"]
                b["router"] = get(p + "moe.router.weight", [D, J])
                b["ew1"] = get(p + "moe.experts.fc1.weight", [E, D, H])
                b["eb1"] = get(p + "moe.experts.fc1.bias", [E, H])
                b["ew2"] = get(p + "moe.experts.fc2.weight", [E, H, D])
                b["eb2"] = get(p + "moe.experts.fc2.bias", [E, D])
                if moe["shared"]:
                    b["sw1"] = get(p + "moe.shared.fc1.weight", [D, H])
                    b["sb1"] = get(p + "moe.shared.fc1.bias", [H])
                    b["sw2"] = get(p + "moe.shared.fc2.weight", [H, D])
                    b["sb2"] = get(p + "moe.shared.fc2.bias", [D])
            self.blocks.append(b)
        self.norm_w = get("norm.weight", [D])
        self.norm_b = get("norm.bias", [D])
        self.head_w = get("head.weight", [D, s["K"]])
        self.head_b = get("head.bias", [s["K"]])

    # -- pieces -------------------------------------------------------------

    def _mlp(self, x, w1, b1, w2, b2):
        """fc2(act(fc1(x))) on rows x [n, D]."""
        return torch.addmm(b2, self.act(torch.addmm(b1, x, w1)), w2)

    def _expert(self, b, e, x):
        return self._mlp(x, b["ew1"][e], b["eb1"][e], b["ew2"][e], b["eb2"][e])

    def _attention(self, b, h, B):
        if self.native_mha:
            # PyTorch's fused inference path of nn.MultiheadAttention (the
            # same formula; weights in its [out, in] layout).
            x = h.view(B, self.s["S"], self.s["D"])
            out, _ = torch._native_multi_head_attention(
                x, x, x, self.s["D"], self.s["heads"], b["qkvwT"], b["qkvb"],
                b["projwT"], b["projb"], None, False)
            return out.reshape(B * self.s["S"], self.s["D"])
        s = self.s
        S, D, nh = s["S"], s["D"], s["heads"]
        dh = D // nh
        qkv = torch.addmm(b["qkvb"], h, b["qkvw"]).view(B, S, 3, nh, dh)
        q = qkv[:, :, 0].transpose(1, 2)  # [B, nh, S, dh]
        k = qkv[:, :, 1].transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        a = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(dh))
        a = torch.softmax(a, dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B * S, D)
        return torch.addmm(b["projb"], o, b["projw"])

    def _note_margin(self, g, k, dim):
        """Records the gap between the k-th and (k+1)-th largest values of g
        along `dim` (a discrete routing decision), per image: a routing that
        a rounding error can flip has a tiny margin."""
        if self.margin is None or k >= g.shape[dim]:
            return
        top = torch.topk(g, k + 1, dim=dim).values
        gap = top.narrow(dim, k - 1, 1) - top.narrow(dim, k, 1)
        self.margin = torch.minimum(self.margin, gap.reshape(g.shape[0], -1).amin(dim=1))

    def _moe(self, b, h, B):
        """The MoE FFN on h [B*S, D] (each image its own routing group)."""
        s, m = self.s, self.s["moe"]
        S, D, E, k = s["S"], s["D"], m["E"], m["k"]
        kind = m["router"]
        y = torch.zeros_like(h)

        if kind in ("token-choice", "sinkhorn"):
            G = torch.softmax((h @ b["router"]).view(B, S, E), dim=-1)
            Q = G
            if kind == "sinkhorn":
                Q = G.clone()
                target = float(S) / float(E)
                for _ in range(m["iterations"]):
                    Q = Q * (target / Q.sum(dim=1, keepdim=True))  # columns
                    Q = Q / Q.sum(dim=2, keepdim=True)  # rows
            self._note_margin(Q, k, 2)
            rank = stable_rank(Q)  # [B, S, E]
            C = capacity(k, S, m["cf"], E)
            # Slots are filled in (rank r, token s) order: the queue position
            # of (s, e) counts the chosen (s', e) with a lower rank, or the
            # same rank and s' < s.
            R = (rank.unsqueeze(-1) == torch.arange(k)).to(torch.int32)  # [B,S,E,k]
            cnt = R.sum(dim=1)  # [B, E, k]
            before = cnt.cumsum(dim=-1) - cnt  # routes of lower rank
            within = R.cumsum(dim=1) - R  # same rank, lower token index
            pos = ((before.unsqueeze(1) + within) * R).sum(dim=-1)  # [B, S, E]
            keep = (rank < k) & (pos < C)
            gate = (G * keep).view(B * S, E)
            keep = keep.view(B * S, E)
            for e in range(E):
                idx = keep[:, e].nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                ye = self._expert(b, e, h.index_select(0, idx))
                ye.mul_(gate.index_select(0, idx)[:, e:e + 1])
                y.index_add_(0, idx, ye)

        elif kind == "expert-choice":
            G = torch.softmax((h @ b["router"]).view(B, S, E), dim=-1)
            C = capacity(1, S, m["cf"], E)
            self._note_margin(G, C, 1)
            # Each expert takes its C best tokens; ties: lower token index.
            top = torch.sort(G, dim=1, descending=True, stable=True).indices[:, :C, :]
            rows = top + (torch.arange(B) * S).view(B, 1, 1)  # [B, C, E]
            Gf = G.view(B * S, E)
            for e in range(E):
                idx = rows[:, :, e].reshape(-1)
                ye = self._expert(b, e, h.index_select(0, idx))
                ye.mul_(Gf.index_select(0, idx)[:, e:e + 1])
                y.index_add_(0, idx, ye)

        elif kind == "soft":
            Ps = m["slots"]
            J = E * Ps
            Lg = (h @ b["router"]).view(B, S, J)
            Dw = torch.softmax(Lg, dim=1)  # over tokens
            Cw = torch.softmax(Lg, dim=2)  # over slots
            X = torch.bmm(Dw.transpose(1, 2), h.view(B, S, D))  # [B, J, D]
            Xe = X.view(B, E, Ps, D).transpose(0, 1).reshape(E, B * Ps, D)
            Hh = self.act(torch.baddbmm(b["eb1"].unsqueeze(1), Xe, b["ew1"]))
            Ye = torch.baddbmm(b["eb2"].unsqueeze(1), Hh, b["ew2"])  # [E, B*Ps, D]
            Y = Ye.view(E, B, Ps, D).transpose(0, 1).reshape(B, J, D)
            y = torch.bmm(Cw, Y).view(B * S, D)

        else:  # per-image
            mean = h.view(B, S, D).mean(dim=1)  # [B, D]
            G = torch.softmax(mean @ b["router"], dim=-1)  # [B, E]
            self._note_margin(G, k, 1)
            chosen = stable_rank(G) < k
            y3 = y.view(B, S, D)
            h3 = h.view(B, S, D)
            for e in range(E):
                imgs = chosen[:, e].nonzero().squeeze(1)
                if imgs.numel() == 0:
                    continue
                ye = self._expert(b, e, h3.index_select(0, imgs).view(-1, D))
                ye = ye.view(-1, S, D).mul_(G.index_select(0, imgs)[:, e].view(-1, 1, 1))
                y3.index_add_(0, imgs, ye)

        if m["shared"]:
            y = y + self._mlp(h, b["sw1"], b["sb1"], b["sw2"], b["sb2"])
        return y

    # -- forward --------------------------------------------------------------

    def __call__(self, images):
        with torch.inference_mode():
            return self.forward(images)

    def forward(self, images):
        s = self.s
        B = images.shape[0]
        C, P, D, S, T = s["C"], s["P"], s["D"], s["S"], s["T"]
        gh, gw = s["H"] // P, s["W"] // P
        x = images.to(self.dtype).reshape(B, C, gh, P, gw, P)
        # Patch vector index c*P*P + dy*P + dx; patches numbered row-major.
        patches = x.permute(0, 2, 4, 1, 3, 5).reshape(B * T, C * P * P)
        tok = torch.addmm(self.patch_b, patches, self.patch_w).view(B, T, D)
        if self.cls is not None:
            tok = torch.cat([self.cls.view(1, 1, D).expand(B, 1, D), tok], dim=1)
        x = (tok + self.pos).reshape(B * S, D)
        eps = s["eps"]
        for b in self.blocks:
            h = F.layer_norm(x, (D,), b["n1w"], b["n1b"], eps)
            x = x + self._attention(b, h, B)
            h = F.layer_norm(x, (D,), b["n2w"], b["n2b"], eps)
            if b["moe"]:
                x = x + self._moe(b, h, B)
            else:
                x = x + self._mlp(h, b["w1"], b["b1"], b["w2"], b["b2"])
        x = F.layer_norm(x, (D,), self.norm_w, self.norm_b, eps).view(B, S, D)
        feat = x[:, 0] if s["pooling"] == "cls" else x.mean(dim=1)
        return torch.addmm(self.head_b, feat, self.head_w)


# ---------------------------------------------------------------------------
# Training mode (autograd)
# ---------------------------------------------------------------------------


def param_shapes(spec):
    """{name: shape} of every parameter of the model, as moec names them."""
    s = spec if isinstance(spec, dict) else parse_spec(spec)
    D, m = s["D"], s["moe"]
    out = {"patch_embed.proj.weight": [s["C"] * s["P"] ** 2, D],
           "patch_embed.proj.bias": [D], "pos_embed": [s["S"], D],
           "norm.weight": [D], "norm.bias": [D],
           "head.weight": [D, s["K"]], "head.bias": [s["K"]]}
    if s["pooling"] == "cls":
        out["cls_token"] = [D]
    for i in range(s["L"]):
        p = f"blocks.{i}."
        out.update({p + "norm1.weight": [D], p + "norm1.bias": [D],
                    p + "attn.qkv.weight": [D, 3 * D], p + "attn.qkv.bias": [3 * D],
                    p + "attn.proj.weight": [D, D], p + "attn.proj.bias": [D],
                    p + "norm2.weight": [D], p + "norm2.bias": [D]})
        if m and i in m["blocks"]:
            E, H = m["E"], m["H"]
            out.update({p + "moe.router.weight": [D, E * m["slots"]],
                        p + "moe.experts.fc1.weight": [E, D, H],
                        p + "moe.experts.fc1.bias": [E, H],
                        p + "moe.experts.fc2.weight": [E, H, D],
                        p + "moe.experts.fc2.bias": [E, D]})
            if m["shared"]:
                out.update({p + "moe.shared.fc1.weight": [D, H],
                            p + "moe.shared.fc1.bias": [H],
                            p + "moe.shared.fc2.weight": [H, D],
                            p + "moe.shared.fc2.bias": [D]})
        else:
            Hm = s["Hm"]
            out.update({p + "mlp.fc1.weight": [D, Hm], p + "mlp.fc1.bias": [Hm],
                        p + "mlp.fc2.weight": [Hm, D], p + "mlp.fc2.bias": [D]})
    return out


def noise_shapes(spec, batch):
    """{`noise.<layer>`: [B, S, E]} for every router that reads noise in
    training: token-choice routers with noise_std > 0."""
    s = spec if isinstance(spec, dict) else parse_spec(spec)
    m = s["moe"]
    if not m or m["router"] != "token-choice" or m["noise_std"] <= 0:
        return {}
    return {f"noise.blocks.{i}.moe": [batch, s["S"], m["E"]]
            for i in sorted(m["blocks"])}


def no_decay(name, shape):
    """Parameters without weight decay (docs/training-abi.md): rank 1, plus
    cls_token and pos_embed."""
    return (len(shape) == 1 or name.endswith(".bias")
            or name in ("cls_token", "pos_embed"))


def _cv2(v):
    """Squared coefficient of variation along the last dim (population
    variance / mean^2)."""
    mean = v.mean(dim=-1)
    return ((v - mean.unsqueeze(-1)) ** 2).mean(dim=-1) / mean ** 2


def _onehot(idx, n, dtype):
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).to(dtype)


class ViMoETrain:
    """The training-mode forward pass with autograd, on a dict of parameter
    tensors (moec names). `loss(...)` follows test/reference/README.md's
    training section: train capacity, noisy token-choice gates
    softmax(L + noise_std/E * N), the auxiliary losses per image averaged
    over the batch and summed over MoE layers, label-smoothed
    cross-entropy. The discrete routing decisions are constants (computed
    on detached values); gradients flow through the gate values.

        tm = ViMoETrain(spec, weights, dtype=torch.float64)
        out = tm.loss(images, labels, noise)   # noise: {"noise.blocks.3.moe": [B,S,E]}
        grads = torch.autograd.grad(out["loss"], list(tm.params.values()))
    """

    def __init__(self, spec, weights, dtype=torch.float32 if torch else None,
                 requires_grad=True):
        self.s = spec if isinstance(spec, dict) else parse_spec(spec)
        self.dtype = dtype
        self.act = _activation(self.s["activation"])
        self.params = {}
        for name, shape in param_shapes(self.s).items():
            if name not in weights:
                raise KeyError(f"missing tensor '{name}' (expected shape {shape})")
            t = weights[name]
            if list(t.shape) != list(shape):
                raise ValueError(f"tensor '{name}' has shape {list(t.shape)}, "
                                 f"expected {list(shape)}")
            self.params[name] = t.detach().to(dtype).clone().requires_grad_(
                requires_grad)
        # The smallest routing margin of the last call (gate units): the gap
        # between the last chosen and the best unchosen candidate of every
        # top-k / top-C / argmax decision (as moec-reference's
        # routing_margin). A float32 run may route differently below ~1e-5.
        self.margin = math.inf

    def _note(self, g, k, dim):
        g = g.detach()
        if k <= 0 or k >= g.shape[dim]:
            return
        top = torch.topk(g, k + 1, dim=dim).values
        gap = top.narrow(dim, k - 1, 1) - top.narrow(dim, k, 1)
        self.margin = min(self.margin, float(gap.min()))

    # -- pieces -------------------------------------------------------------

    def _mlp(self, x, w1, b1, w2, b2):
        return torch.addmm(b2, self.act(torch.addmm(b1, x, w1)), w2)

    def _expert_weights(self, p):
        """Per expert (w1, b1, w2, b2); unbind: one backward op, where
        indexing would allocate a full-size zero gradient per expert."""
        return list(zip(*(p[f"moe.experts.{n}"].unbind(0) for n in
                          ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))))

    def _attention(self, p, h, B):
        s = self.s
        S, D, nh = s["S"], s["D"], s["heads"]
        dh = D // nh
        qkv = torch.addmm(p["attn.qkv.bias"], h, p["attn.qkv.weight"]).view(B, S, 3, nh, dh)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [B, nh, S, dh]
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(dh)), dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B * S, D)
        return torch.addmm(p["attn.proj.bias"], o, p["attn.proj.weight"])

    def _routed(self, p, h, gate, keep):
        """y = sum over kept (row, e) of gate[row, e] * Expert_e(h[row])."""
        y = torch.zeros_like(h)
        ws = self._expert_weights(p)
        for e in range(keep.shape[1]):
            idx = keep[:, e].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            ye = self._mlp(h.index_select(0, idx), *ws[e])
            # .to(y.dtype): a no-op in float32/64; under torch.autocast the
            # expert's output may be bf16 (bench/gpu_check_torch_train.py).
            y = y.index_add(0, idx, (ye * gate.index_select(0, idx)[:, e:e + 1]).to(y.dtype))
        return y

    def _aux(self, L, Gd, Ln, k, sn):
        """Per-image auxiliary losses [B] of router logits L [B, R, J]; Gd:
        dispatch gates; Ln: noisy logits (or None)."""
        J = L.shape[-1]
        out = {}
        P = torch.softmax(L, dim=-1)
        out["importance"] = _cv2(P.sum(dim=1))
        out["z_loss"] = (torch.logsumexp(L, dim=-1) ** 2).mean(dim=1)
        top1 = stable_rank(Gd.detach()) == 0  # argmax, ties: lower index
        if self.s["moe"]["aux"]["balance"] > 0:
            self._note(Gd, 1, -1)
        frac = top1.to(L.dtype).mean(dim=1)
        out["balance"] = J * J * (Gd.mean(dim=1) * frac).mean(dim=-1)
        if Ln is not None:
            kth = (stable_rank(Ln.detach()) == k - 1).to(L.dtype)  # [B, R, J]
            t = (Ln * kth).sum(dim=-1, keepdim=True)
            p = 0.5 * torch.erfc((t - L) / (sn * math.sqrt(2.0)))
            out["load"] = _cv2(p.mean(dim=1))
        return out

    def _moe(self, p, h, B, noise, labels):
        s, m = self.s, self.s["moe"]
        S, D, E, k = s["S"], s["D"], m["E"], m["k"]
        kind = m["router"]
        aux = {}
        if kind in ("token-choice", "sinkhorn"):
            L = (h @ p["moe.router.weight"]).view(B, S, E)
            Gd, Ln, sn = torch.softmax(L, dim=-1), None, m["noise_std"] / E
            if kind == "token-choice" and m["noise_std"] > 0:
                Ln = L + sn * noise.to(L.dtype)
                Gd = torch.softmax(Ln, dim=-1)
            Q = Gd.detach()
            if kind == "sinkhorn":
                target = float(S) / float(E)
                for _ in range(m["iterations"]):
                    Q = Q * (target / Q.sum(dim=1, keepdim=True))
                    Q = Q / Q.sum(dim=2, keepdim=True)
            rank = stable_rank(Q)
            self._note(Q, k, 2)
            C = capacity(k, S, m["cf_train"], E)
            R = (rank.unsqueeze(-1) == torch.arange(k)).to(torch.int64)
            cnt = R.sum(dim=1)
            before = cnt.cumsum(dim=-1) - cnt
            within = R.cumsum(dim=1) - R
            pos = ((before.unsqueeze(1) + within) * R).sum(dim=-1)
            keep = ((rank < k) & (pos < C)).view(B * S, E)
            y = self._routed(p, h, Gd.reshape(B * S, E), keep)
            aux = self._aux(L, Gd, Ln, k, sn)
        elif kind == "expert-choice":
            L = (h @ p["moe.router.weight"]).view(B, S, E)
            G = torch.softmax(L, dim=-1)
            C = capacity(1, S, m["cf_train"], E)
            self._note(G, C, 1)
            top = torch.sort(G.detach(), dim=1, descending=True, stable=True).indices[:, :C, :]
            keep = torch.zeros(B, S, E, dtype=torch.bool)
            keep.scatter_(1, top, True)
            y = self._routed(p, h, G.reshape(B * S, E), keep.view(B * S, E))
            aux = self._aux(L, G, None, 1, 0.0)
        elif kind == "soft":
            Ps = m["slots"]
            J = E * Ps
            L = (h @ p["moe.router.weight"]).view(B, S, J)
            Dw = torch.softmax(L, dim=1)
            Cw = torch.softmax(L, dim=2)
            X = torch.bmm(Dw.transpose(1, 2), h.view(B, S, D))  # [B, J, D]
            Xe = X.view(B, E, Ps, D).transpose(0, 1).reshape(E, B * Ps, D)
            Hh = self.act(torch.baddbmm(p["moe.experts.fc1.bias"].unsqueeze(1), Xe,
                                        p["moe.experts.fc1.weight"]))
            Ye = torch.baddbmm(p["moe.experts.fc2.bias"].unsqueeze(1), Hh,
                               p["moe.experts.fc2.weight"])
            Y = Ye.view(E, B, Ps, D).transpose(0, 1).reshape(B, J, D)
            y = torch.bmm(Cw, Y).view(B * S, D)
            aux = self._aux(L, Cw, None, 1, 0.0)
        else:  # per-image
            mean = h.view(B, S, D).mean(dim=1)
            L = mean @ p["moe.router.weight"]  # [B, E]
            G = torch.softmax(L, dim=-1)
            chosen = stable_rank(G.detach()) < k  # [B, E]
            self._note(G, k, 1)
            keep = chosen.unsqueeze(1).expand(B, S, E).reshape(B * S, E)
            gate = G.unsqueeze(1).expand(B, S, E).reshape(B * S, E)
            y = self._routed(p, h, gate, keep)
            aux = self._aux(L.unsqueeze(1), G.unsqueeze(1), None, 1, 0.0)
            if m["super_class_map"] is not None:
                target = torch.tensor(m["super_class_map"], dtype=torch.int64)[labels.long()]
                aux["super_class"] = F.cross_entropy(L, target, reduction="none")
        if m["shared"]:
            y = y + self._mlp(h, p["moe.shared.fc1.weight"], p["moe.shared.fc1.bias"],
                              p["moe.shared.fc2.weight"], p["moe.shared.fc2.bias"])
        return y, {key: v.mean() for key, v in aux.items()}

    # -- forward --------------------------------------------------------------

    def logits_and_aux(self, images, labels=None, noise=None, params=None):
        """(logits [B, K], {layer: {loss kind: value}}) in training mode."""
        s, P = self.s, params if params is not None else self.params
        noise = noise or {}
        self.margin = math.inf
        B = images.shape[0]
        C, Pp, D, S, T = s["C"], s["P"], s["D"], s["S"], s["T"]
        gh, gw = s["H"] // Pp, s["W"] // Pp
        x = images.to(self.dtype).reshape(B, C, gh, Pp, gw, Pp)
        patches = x.permute(0, 2, 4, 1, 3, 5).reshape(B * T, C * Pp * Pp)
        tok = torch.addmm(P["patch_embed.proj.bias"], patches,
                          P["patch_embed.proj.weight"]).view(B, T, D)
        if s["pooling"] == "cls":
            tok = torch.cat([P["cls_token"].view(1, 1, D).expand(B, 1, D), tok], dim=1)
        x = (tok + P["pos_embed"]).reshape(B * S, D)
        eps = s["eps"]
        layers = {}
        m = s["moe"]
        for i in range(s["L"]):
            pre = f"blocks.{i}."
            p = {n[len(pre):]: t for n, t in P.items() if n.startswith(pre)}
            h = F.layer_norm(x, (D,), p["norm1.weight"], p["norm1.bias"], eps)
            x = x + self._attention(p, h, B)
            h = F.layer_norm(x, (D,), p["norm2.weight"], p["norm2.bias"], eps)
            if m and i in m["blocks"]:
                y, aux = self._moe(p, h, B, noise.get(f"noise.blocks.{i}.moe"), labels)
                layers[f"blocks.{i}.moe"] = aux
                x = x + y
            else:
                x = x + self._mlp(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"],
                                  p["mlp.fc2.weight"], p["mlp.fc2.bias"])
        x = F.layer_norm(x, (D,), P["norm.weight"], P["norm.bias"], eps).view(B, S, D)
        feat = x[:, 0] if s["pooling"] == "cls" else x.mean(dim=1)
        return torch.addmm(P["head.bias"], feat, P["head.weight"]), layers

    def loss(self, images, labels, noise=None, params=None):
        """{loss, ce_loss, aux_loss, correct, importance, load, balance,
        z_loss, super_class, layers} (tensors; loss is differentiable)."""
        logits, layers = self.logits_and_aux(images, labels, noise, params)
        labels = labels.long()
        ce = F.cross_entropy(logits, labels, label_smoothing=self.s["label_smoothing"])
        w = self.s["moe"]["aux"] if self.s["moe"] else {}
        aux = torch.zeros((), dtype=logits.dtype)
        totals = {}
        for lay in layers.values():
            for key, v in lay.items():
                totals[key] = totals.get(key, 0.0) + v
                if w.get(key, 0.0) > 0:
                    aux = aux + w[key] * v
        out = {"loss": ce + aux, "ce_loss": ce, "aux_loss": aux,
               "correct": (stable_rank(logits.detach()) == 0)[
                   torch.arange(labels.shape[0]), labels].sum(),
               "layers": layers}
        out.update(totals)
        return out


# ---------------------------------------------------------------------------
# Helpers for the command line
# ---------------------------------------------------------------------------


def read_images(path, spec):
    per = spec["C"] * spec["H"] * spec["W"]
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    if not buf or len(buf) % (4 * per):
        raise ValueError(f"{path}: size {len(buf)} is not a positive multiple of "
                         f"one image ({4 * per} bytes)")
    t = torch.frombuffer(buf, dtype=torch.float32)
    return t.view(-1, spec["C"], spec["H"], spec["W"]).clone()


def forward_batched(model, images, batch):
    outs = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch):
            outs.append(model.forward(images[i:i + batch]))
    return torch.cat(outs)


def randomize(weights, seed):
    """Larger random weights so that routing and attention are non-trivial:
    matrices N(0, 1.5/sqrt(fan_in)), biases N(0, 0.2), norm weights
    1 + N(0, 0.2), cls_token and pos_embed N(0, 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(weights):
        t = weights[name]
        z = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        if name.endswith(".bias"):
            v = 0.2 * z
        elif name.endswith(".weight") and name.split(".")[-2].startswith("norm"):
            v = 1.0 + 0.2 * z
        elif name in ("cls_token", "pos_embed"):
            v = 0.5 * z
        else:
            fan_in = t.shape[-2] if t.dim() >= 2 else t.shape[0]
            v = z * (1.5 / math.sqrt(fan_in))
        out[name] = v.to(torch.float32)
    return out


def blas_info():
    info = {"torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    cfg = torch.__config__.show()
    info["config"] = [ln.strip() for ln in cfg.splitlines()
                      if any(w in ln for w in ("CPU capability", "BLAS", "OpenMP",
                                               "MKL-DNN", "LAPACK"))]
    # BLAS_INFO=... is inside the long "Build settings" line: cut it out.
    for ln in cfg.splitlines():
        for part in ln.split(","):
            if "BLAS_INFO" in part or "LAPACK_INFO" in part:
                info["config"].append(part.strip().replace("Build settings: ", ""))
    info["config"] = [c for c in info["config"] if not c.startswith("- Build settings")]
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for ln in f:
                p = ln.split()[-1]
                if ("blas" in p or "lapack" in p) and p not in libs:
                    libs.append(p)
    except OSError:
        pass
    info["blas_libraries"] = libs
    try:
        import ctypes
        lib = ctypes.CDLL("libblas.so.3")
        for fn in ("openblas_get_config", "openblas_get_corename"):
            f = getattr(lib, fn)
            f.restype = ctypes.c_char_p
            info[fn] = f().decode()
        info["openblas_num_threads"] = lib.openblas_get_num_threads()
    except (OSError, AttributeError):
        pass
    return info


def set_threads(n, blas=None):
    """PyTorch's intra-op threads, and OpenBLAS's own threads (default: n)."""
    torch.set_num_threads(n)
    try:
        import ctypes
        ctypes.CDLL("libblas.so.3").openblas_set_num_threads(n if blas is None else blas)
    except (OSError, AttributeError):
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("logits")
    p.add_argument("spec")
    p.add_argument("weights")
    p.add_argument("images")
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--f64", action="store_true", help="compute in float64")
    p = sub.add_parser("margins", help="each image's smallest routing margin, "
                       "in float64, as a JSON list")
    p.add_argument("spec")
    p.add_argument("weights")
    p.add_argument("images")
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("randomize")
    p.add_argument("inp")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("serve")
    p.add_argument("spec")
    p.add_argument("weights")
    p.add_argument("images")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blas-threads", type=int, default=None,
                   help="OpenBLAS threads (default: --threads)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--split", type=int, default=1,
                   help="split each batch over this many Python threads, each "
                   "running its share (use with --threads 1 --blas-threads 1)")
    sub.add_parser("info")
    a = ap.parse_args(argv)

    if a.cmd == "info":
        print(json.dumps(blas_info()))
        return 0
    if a.cmd == "randomize":
        write_safetensors(a.out, randomize(read_safetensors(a.inp), a.seed))
        return 0

    set_threads(a.threads, getattr(a, "blas_threads", None))
    spec = parse_spec(a.spec)
    f64 = getattr(a, "f64", False) or a.cmd == "margins"
    dtype = torch.float64 if f64 else torch.float32
    model = ViMoE(spec, read_safetensors(a.weights), dtype=dtype)
    images = read_images(a.images, spec)

    if a.cmd == "margins":
        out = []
        for i in range(0, images.shape[0], 256):
            x = images[i:i + 256]
            model.margin = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
            model(x)
            out += model.margin.tolist()
        print(json.dumps(out))
        return 0

    if a.cmd == "logits":
        y = forward_batched(model, images, a.batch).to(torch.float32)
        with open(a.out, "wb") as f:
            f.write(y.contiguous().numpy().astype("<f4").tobytes())
        return 0

    # serve: warm up, then one timed pass over all images per 'time' line.
    n = images.shape[0]
    forward = model.forward
    if a.split > 1:
        # Data parallel within a batch: every image is its own routing group,
        # so the split changes nothing in the results. torch ops release the
        # GIL, so the threads run in parallel.
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(a.split)

        def part(x):
            with torch.inference_mode():
                return model.forward(x)

        def forward(x):
            futs = [pool.submit(part, c) for c in x.chunk(a.split)]
            return torch.cat([f.result() for f in futs])

    with torch.inference_mode():
        for i in range(a.warmup):
            j = (i * a.batch) % n
            forward(images[j:j + a.batch])
    print(json.dumps({"ready": True, "images": n, "info": blas_info()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "time":
            print(json.dumps({"error": f"unknown command '{cmd}'"}), flush=True)
            continue
        with torch.inference_mode():
            t0 = time.perf_counter()
            for i in range(0, n, a.batch):
                forward(images[i:i + a.batch])
            dt = time.perf_counter() - t0
        print(json.dumps({"seconds": dt, "images": n}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
