#!/usr/bin/env python3
"""PyTorch training of a moec model (ViMoETrain of bench/moe_torch.py).

The same recipe as `moec-run train` (docs/training-abi.md): the spec's
optimizer (AdamW or SGD, with weight decay off for rank-1 parameters,
cls_token and pos_embed), global-norm gradient clipping, linear warm-up then
cosine (or constant) learning rate per step, label smoothing, random crop
(zero padding) and horizontal flip, standard normal router noise for every
noisy token-choice router, train capacity; evaluation at the eval capacity
without noise. Fashion-MNIST only (idx files, optionally gzipped).

A full-accuracy run (20 minutes of training, test accuracy after every
epoch):

    env -u OPENBLAS_CORETYPE /usr/bin/python3 bench/torch_train.py \\
        --spec examples/vimoe-tiny-fmnist.json --minutes 20 --threads 2

`--weights W.safetensors` starts from given weights (e.g. `moec-run init`),
else from moec's initialization recipe (trunc_normal 0.02 matrices, zero
biases, unit norm weights, N(0, 1e-6) cls_token). Library use:
`train(spec, weights, data_dir, steps=..., threads=...)` (see
bench/train_vs_pytorch.py).
"""
import argparse
import collections
import gzip
import json
import math
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_torch  # noqa: E402
moe_torch.ensure_torch_python(passive=True)
from moe_torch import torch, F  # noqa: E402,F401

FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _idx(path):
    if not os.path.isfile(path) and os.path.isfile(path + ".gz"):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xff
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    t = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return t.reshape(dims)


def load_fmnist(d, split):
    """(images [N, 1, 28, 28] float32 normalized as moec does, labels [N]
    int64) of split 'train' or 't10k'."""
    x = _idx(os.path.join(d, f"{split}-images-idx3-ubyte"))
    y = _idx(os.path.join(d, f"{split}-labels-idx1-ubyte")).long()
    # moec: (pixel / 255 - mean) * (1 / std), in float32.
    mean = torch.tensor(FMNIST_MEAN, dtype=torch.float32)
    scale = 1.0 / torch.tensor(FMNIST_STD, dtype=torch.float32)
    x = (x.to(torch.float32) / 255.0 - mean) * scale
    return x.unsqueeze(1).contiguous(), y


def augment(x, pad, flip, gen):
    """Random crop after padding by `pad` pixels (with the value of a
    normalized 0 pixel) and random horizontal flips, per image."""
    B, C, H, W = x.shape
    if pad > 0:
        fill = float((0.0 - FMNIST_MEAN) / FMNIST_STD)
        xp = F.pad(x, (pad, pad, pad, pad), value=fill)
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        rows = (dy.view(B, 1) + torch.arange(H)).view(B, 1, H, 1)
        cols = (dx.view(B, 1) + torch.arange(W)).view(B, 1, 1, W)
        bi = torch.arange(B).view(B, 1, 1, 1)
        ci = torch.arange(C).view(1, C, 1, 1)
        x = xp[bi, ci, rows, cols]
    if flip:
        f = torch.rand(B, generator=gen) < 0.5
        x = torch.where(f.view(B, 1, 1, 1), x.flip(3), x)
    return x


# ---------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------


def train_settings(spec_path):
    """The spec's train / data settings with the defaults of docs/spec.md."""
    with open(spec_path) as f:
        root = json.load(f)
    t = root.get("train") or {}
    o = t.get("optimizer") or {}
    sc = t.get("schedule") or {}
    aug = (root.get("data") or {}).get("augment") or {}
    kind = o.get("kind", "adamw")
    return {
        "optimizer": kind, "lr": float(o.get("lr", 1e-3)),
        "weight_decay": float(o.get("weight_decay", 0.05)),
        "betas": tuple(o.get("betas", [0.9, 0.999])), "eps": float(o.get("eps", 1e-8)),
        "momentum": float(o.get("momentum", 0.9)),
        "grad_clip": float(o.get("grad_clip", 1.0)),
        "schedule": sc.get("kind", "cosine"),
        "warmup_epochs": float(sc.get("warmup_epochs", 0)),
        "min_lr_ratio": float(sc.get("min_lr_ratio", 0.0)),
        "batch": int(t.get("batch", 128)), "epochs": int(t.get("epochs", 10)),
        "seed": int(t.get("seed", 0)),
        "crop_padding": int(aug.get("crop_padding", 0)),
        "horizontal_flip": bool(aug.get("horizontal_flip", False)),
    }


def lr_at(t, cfg, total, warmup):
    """docs/training-abi.md: the learning rate of 0-based step t."""
    lr = cfg["lr"]
    if t < warmup:
        return lr * (t + 1) / warmup
    if cfg["schedule"] == "constant":
        return lr
    m = cfg["min_lr_ratio"]
    frac = min(1.0, (t - warmup) / max(1, total - warmup))
    return lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(tm, cfg):
    decay, no_decay = [], []
    for name, p in tm.params.items():
        (no_decay if moe_torch.no_decay(name, list(p.shape)) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"])


def init_weights(spec, seed):
    """moec's initialization recipe (trunc_normal std 0.02 within 2 std for
    matrices and pos_embed, zero biases, unit norm weights, N(0, 1e-6)
    cls_token); not moec-run init's random stream."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in moe_torch.param_shapes(spec).items():
        if name.endswith(".bias"):
            out[name] = torch.zeros(shape)
        elif name.split(".")[-2].startswith("norm") if "." in name else False:
            out[name] = torch.ones(shape)
        elif name == "cls_token":
            out[name] = 1e-6 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen)
            while True:
                bad = t.abs() > 2
                if not bad.any():
                    break
                t[bad] = torch.randn(int(bad.sum()), generator=gen)
            out[name] = 0.02 * t
    return out


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def evaluate(spec, tm, x, y, batch=500):
    """(accuracy, mean cross-entropy) at the eval capacity, no noise."""
    model = moe_torch.ViMoE(spec, {n: p.detach() for n, p in tm.params.items()},
                            dtype=torch.float32)
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            z = model.forward(x[i:i + batch])
            correct += int((z.argmax(dim=1) == y[i:i + batch]).sum())
            loss += float(F.cross_entropy(z, y[i:i + batch], reduction="sum"))
    return correct / x.shape[0], loss / x.shape[0]


def train(spec_path, weights, data_dir, steps=None, minutes=None, threads=2,
          seed=None, eval_each_epoch=False, warmup_steps=3, log=print,
          blas_threads=None, device="cpu", compile=False):
    """Trains from `weights` ({name: tensor}). Stops after `steps` steps, or
    when `minutes` of training time are spent, or after the spec's epochs.
    Returns {images_per_s (over the steps after the first warmup_steps),
    steps, epochs, seconds, final_loss (mean over the last epoch's steps),
    last10_loss (mean over the last 10 steps), test_accuracy (if
    evaluated)}. `device` "cuda" runs everything (data, shuffling,
    augmentation, noise) on the GPU: its random streams differ from the
    CPU's, the recipe does not. `compile` runs the loss (forward; backward
    through AOTAutograd) under torch.compile (PyTorch 2.x); its compilation
    falls in the first steps, which warmup_steps leaves out."""
    moe_torch.set_threads(threads, blas_threads)
    spec = moe_torch.parse_spec(spec_path)
    cfg = train_settings(spec_path)
    seed = cfg["seed"] if seed is None else seed
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    train_x, train_y = (t.to(device) for t in load_fmnist(data_dir, "train"))
    test_x = test_y = None
    if eval_each_epoch:
        test_x, test_y = (t.to(device) for t in load_fmnist(data_dir, "t10k"))
    if device != "cpu":
        # The model code makes its index tensors without a device.
        torch.set_default_device(device)
        weights = {n: t.to(device) for n, t in weights.items()}
    B = cfg["batch"]
    per_epoch = train_x.shape[0] // B  # the last partial batch is dropped
    total = cfg["epochs"] * per_epoch
    warmup = int(round(cfg["warmup_epochs"] * per_epoch))
    tm = moe_torch.ViMoETrain(spec, weights, dtype=torch.float32)
    opt = make_optimizer(tm, cfg)
    params = list(tm.params.values())
    noise_shapes = moe_torch.noise_shapes(spec, B)
    loss_fn = torch.compile(tm.loss) if compile else tm.loss
    step, epoch, timed_images, timed_s, train_s = 0, 0, 0, 0.0, 0.0
    history = []
    recent = collections.deque(maxlen=10)  # the last 10 steps' losses
    result = {"steps": 0, "epochs": 0}
    budget = None if minutes is None else 60.0 * minutes
    done = False
    while not done and epoch < cfg["epochs"]:
        perm = torch.randperm(train_x.shape[0], generator=gen)
        run_loss, run_correct, run_n = 0.0, 0, 0
        for b in range(per_epoch):
            t0 = time.perf_counter()
            idx = perm[b * B:(b + 1) * B]
            x = augment(train_x[idx], cfg["crop_padding"], cfg["horizontal_flip"], gen)
            y = train_y[idx]
            noise = {n: torch.randn(sh, generator=gen) for n, sh in noise_shapes.items()}
            out = loss_fn(x, y, noise)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            lr = lr_at(step, cfg, total, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            dt = time.perf_counter() - t0
            train_s += dt
            if step >= warmup_steps:
                timed_s += dt
                timed_images += B
            recent.append(float(out["loss"]))
            run_loss += float(out["loss"]) * B
            run_correct += int(out["correct"])
            run_n += B
            step += 1
            if steps is not None and step >= steps:
                done = True
            if budget is not None and train_s >= budget:
                done = True
            if done:
                break
        epoch += 1
        line = {"epoch": round(step / per_epoch, 4), "step": step, "train_loss": run_loss / max(run_n, 1),
                "train_accuracy": run_correct / max(run_n, 1),
                "minutes": train_s / 60.0,
                "images_per_s": timed_images / timed_s if timed_s > 0 else None}
        if eval_each_epoch:
            acc, tl = evaluate(spec, tm, test_x, test_y)
            line["test_accuracy"], line["test_loss"] = acc, tl
        history.append(line)
        if log:
            log(json.dumps(line))
    result.update({"steps": step, "epochs": history[-1]["epoch"] if history else 0,
                   "seconds": train_s, "history": history,
                   "images_per_s": timed_images / timed_s if timed_s > 0 else None,
                   "final_loss": history[-1]["train_loss"] if history else None,
                   "last10_loss": sum(recent) / len(recent) if recent else None})
    if eval_each_epoch and history:
        result["test_accuracy"] = history[-1]["test_accuracy"]
    result["model"] = tm
    return result


def override_spec(path, assignments):
    """A temporary copy of the spec at `path` with KEY=JSON assignments
    applied (dotted keys; intermediate objects are created)."""
    import tempfile
    with open(path) as f:
        root = json.load(f)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"error: --set {item!r}: expected KEY=JSON")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            sys.exit(f"error: --set {item!r}: value is not JSON ({e})")
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                sys.exit(f"error: --set {item!r}: '{part}' is not an object in {path}")
        node[parts[-1]] = parsed
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(root, f)
    f.close()
    return f.name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="examples/vimoe-tiny-fmnist.json")
    ap.add_argument("--weights", help="initial weights (safetensors)")
    ap.add_argument("--data", default=None, help="Fashion-MNIST directory "
                    f"(default: the spec's data.path, else {FMNIST_DEFAULT})")
    ap.add_argument("--minutes", type=float, default=None, help="training time budget")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="OpenBLAS threads (default: --threads)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-eval", action="store_true", help="no test accuracy per epoch")
    ap.add_argument("--save", help="write the final weights here (safetensors)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a spec field, e.g. train.optimizer.lr=0.002 "
                         "(repeatable; the recipe sweeps of bench/README.md)")
    a = ap.parse_args()
    if a.set:
        a.spec = override_spec(a.spec, a.set)
    spec = moe_torch.parse_spec(a.spec)
    data = a.data or spec["data"].get("path") or FMNIST_DEFAULT
    if a.weights:
        w = moe_torch.read_safetensors(a.weights)
    else:
        w = init_weights(spec, 0 if a.seed is None else a.seed)
    r = train(a.spec, w, data, steps=a.steps, minutes=a.minutes, threads=a.threads,
              seed=a.seed, eval_each_epoch=not a.no_eval, blas_threads=a.blas_threads,
              device=a.device)
    if a.save:
        moe_torch.write_safetensors(a.save, {n: p.detach() for n, p in r["model"].params.items()})
    summary = {k: v for k, v in r.items() if k not in ("model", "history")}
    print(json.dumps({"summary": summary, "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
