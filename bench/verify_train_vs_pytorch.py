#!/usr/bin/env python3
"""moec's compiled train_step against PyTorch autograd: loss and gradients.

The same weights and batch go through `moec-run call MODEL --entry
train_step` (lr = 0, so nothing moves) and through ViMoETrain
(bench/moe_torch.py) in float32 and in float64. Reported: the loss, ce_loss
and aux_loss of each, and per parameter tensor the relative difference
||g_moec - g_torch|| / ||g_torch|| (against float64; float32's own
difference from float64 is shown for scale). A tensor whose float64
gradient norm is below 1e-3 of the largest tensor's is compared against that
floor instead (its gradient is ~0). Passes when the loss and every
tensor's gradient differ from float64 by less than --tol (1e-4).

Two weight sets, as in infer_vs_pytorch.py: moec's initial weights
(`moec-run init`) and larger random ones (`moe_torch.py randomize`: routing
decisive, capacity drops). The batch: Fashion-MNIST training images and
labels for a 1x28x28 fashion-mnist spec, else N(0, 1) images and random
labels; router noise N(0, 1). A batch whose smallest routing margin (float64)
is below --min-margin is replaced by the next one, since float32 may route
it differently.

usage: env -u OPENBLAS_CORETYPE /usr/bin/python3 bench/verify_train_vs_pytorch.py
           --bin build/bin [--spec examples/vimoe-tiny-fmnist.json]
           [--batch B] [--seed 0] [--tol 1e-4] [--threads 2] [--work DIR]
           [--weights both|init|random] [--verbose]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_torch  # noqa: E402
moe_torch.ensure_torch_python()
from moe_torch import torch  # noqa: E402
import torch_train  # noqa: E402

ROOT = os.path.dirname(HERE)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr.strip()}")
    return p.stdout


def read_manifest(path):
    sys.path.insert(0, os.path.join(ROOT, "test", "e2e"))
    from check_reference import read_manifest as rm
    return rm(path)


class Batches:
    """Successive training batches: Fashion-MNIST if the spec is a 1x28x28
    fashion-mnist model and the data are there, else random."""

    def __init__(self, spec, entry, n, seed, data):
        self.spec, self.entry, self.n = spec, entry, n
        self.gen = torch.Generator().manual_seed(seed)
        self.pos = 0
        self.x = self.y = None
        ds = spec["data"].get("dataset", "fashion-mnist")
        if (spec["C"], spec["H"], spec["W"]) == (1, 28, 28) and ds == "fashion-mnist":
            d = data or spec["data"].get("path") or torch_train.FMNIST_DEFAULT
            if os.path.exists(os.path.join(d, "train-images-idx3-ubyte.gz")) or \
                    os.path.exists(os.path.join(d, "train-images-idx3-ubyte")):
                self.x, self.y = torch_train.load_fmnist(d, "train")
        self.source = "fashion-mnist train" if self.x is not None else "N(0, 1) noise"

    def next(self):
        s, n = self.spec, self.n
        b = {}
        if self.x is not None:
            b["images"] = self.x[self.pos:self.pos + n].clone()
            b["labels"] = self.y[self.pos:self.pos + n].to(torch.int32)
            self.pos += n
        else:
            b["images"] = torch.randn(n, s["C"], s["H"], s["W"], generator=self.gen)
            b["labels"] = torch.randint(0, s["K"], (n,), generator=self.gen).to(torch.int32)
        for t in self.entry["inputs"]:
            name = t["name"]
            if name in ("images", "labels"):
                continue
            if t.get("role") == "normal_noise":
                b[name] = torch.randn(t["shape"], generator=self.gen)
            elif name in ("step", "warmup_steps", "lr"):
                b[name] = torch.zeros([])
            elif name == "total_steps":
                b[name] = torch.full([], 10.0)
            else:
                sys.exit(f"FAIL: train_step input '{name}' is not in docs/training-abi.md")
        return b


def rel(a, b, floor=0.0):
    d = float((a.double() - b.double()).norm())
    n = max(float(b.double().norm()), floor)
    return d / n if n > 0 else d


def check(args, spec, model, manifest, weights, tag, work):
    entry = manifest["entries"].get("train_step")
    if entry is None:
        sys.exit(f"FAIL: {model} has no train_step entry point")
    batches = Batches(spec, entry, manifest["batch"], args.seed, args.data)
    t64 = moe_torch.ViMoETrain(spec, weights, dtype=torch.float64)
    for attempt in range(args.tries):
        batch = batches.next()
        noise = {k: v for k, v in batch.items() if k.startswith("noise.")}
        o64 = t64.loss(batch["images"], batch["labels"], noise)
        if t64.margin >= args.min_margin:
            break
    else:
        print(f"  warning: {tag}: no batch with routing margin >= {args.min_margin} "
              f"in {args.tries} tries; using the last ({t64.margin:.2e})")
    margin = t64.margin
    t32 = moe_torch.ViMoETrain(spec, weights, dtype=torch.float32)
    o32 = t32.loss(batch["images"], batch["labels"], noise)
    names = list(t64.params)
    g64 = dict(zip(names, torch.autograd.grad(o64["loss"], [t64.params[n] for n in names])))
    g32 = dict(zip(names, torch.autograd.grad(o32["loss"], [t32.params[n] for n in names])))

    wpath = os.path.join(work, f"{tag}.weights.safetensors")
    bpath = os.path.join(work, f"{tag}.batch.safetensors")
    opath = os.path.join(work, f"{tag}.out.safetensors")
    moe_torch.write_safetensors(wpath, weights)
    moe_torch.write_safetensors(bpath, batch)
    if os.path.exists(opath):
        os.remove(opath)
    cmd = [args.moec_run, "call", model, "--entry", "train_step", "--weights", wpath,
           "--inputs", bpath, "-o", opath]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    run(cmd)
    got = moe_torch.read_safetensors(opath, all_dtypes=True)

    ok = True
    print(f"{tag} weights, batch {manifest['batch']} ({batches.source}), routing margin "
          f"{margin:.2e}:")
    for key in ("loss", "ce_loss", "aux_loss"):
        if key not in got:
            print(f"  FAIL: output '{key}' missing")
            ok = False
            continue
        m, a, b = float(got[key]), float(o32[key]), float(o64[key])
        e = abs(m - b) / abs(b) if b else abs(m)
        # aux_loss is held to the loss's scale (it can be ~0).
        e_scaled = abs(m - b) / max(abs(b), abs(float(o64["loss"]))) if key == "aux_loss" else e
        flag = "" if e_scaled < args.tol else "  FAIL"
        ok &= e_scaled < args.tol
        print(f"  {key:8s} moec {m:.8g}  torch-f32 {a:.8g}  torch-f64 {b:.10g}  "
              f"rel diff {e:.2e}{flag}")
    if "correct" in got and int(float(got["correct"])) != int(o64["correct"]):
        print(f"  FAIL: correct: moec {float(got['correct'])}, torch {int(o64['correct'])}")
        ok = False

    floor = 1e-3 * max(float(g.norm()) for g in g64.values())
    rows = []
    for n in names:
        key = "grad." + n
        if key not in got:
            print(f"  FAIL: output '{key}' missing")
            ok = False
            continue
        gm = got[key]
        if list(gm.shape) != list(g64[n].shape):
            print(f"  FAIL: '{key}' has shape {list(gm.shape)}, expected {list(g64[n].shape)}")
            ok = False
            continue
        rows.append((rel(gm, g64[n], floor), rel(g32[n], g64[n], floor), n,
                     float(g64[n].norm()) < floor))
    rows.sort(reverse=True)
    worst = rows[0] if rows else (0.0, 0.0, "", False)
    for e, e32, n, floored in (rows if args.verbose else rows[:5]):
        print(f"  grad.{n:40s} moec {e:.2e}  torch-f32 {e32:.2e}"
              f"{'  (floored)' if floored else ''}{'  FAIL' if e >= args.tol else ''}")
    bad = [r for r in rows if not r[0] < args.tol]
    ok &= not bad
    gn = float(got["grad_norm"]) if "grad_norm" in got else math.nan
    true_gn = math.sqrt(sum(float(g.double().pow(2).sum()) for g in g64.values()))
    print(f"  gradients: {len(rows)} tensors, max relative difference {worst[0]:.2e} "
          f"(grad.{worst[2]}), torch-f32 max {max((r[1] for r in rows), default=0):.2e}; "
          f"grad_norm moec {gn:.6g} vs {true_gn:.6g}"
          + (f"; {len(bad)} tensors above {args.tol:g}" if bad else ""))
    return ok, worst[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--moec")
    ap.add_argument("--moec-run")
    ap.add_argument("--spec", default=os.path.join(ROOT, "examples", "vimoe-tiny-fmnist.json"))
    ap.add_argument("--batch", type=int, default=None,
                    help="compile batch (default: the spec's train.batch; an "
                    "artifact with train_step needs exactly that)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--min-margin", type=float, default=1e-5)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None,
                    help="passed to moec-run call (default: not passed)")
    ap.add_argument("--weights", choices=("both", "init", "random"), default="both")
    ap.add_argument("--data", help="Fashion-MNIST directory")
    ap.add_argument("--work")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    args.moec = args.moec or os.path.join(args.bin, "moec")
    args.moec_run = args.moec_run or os.path.join(args.bin, "moec-run")
    torch.set_num_threads(2)
    work = args.work or tempfile.mkdtemp(prefix="moec-verify-train-")
    os.makedirs(work, exist_ok=True)
    spec = moe_torch.parse_spec(args.spec)
    model = os.path.join(work, "model.moec")
    batch = args.batch or torch_train.train_settings(args.spec)["batch"]
    run([args.moec, "compile", args.spec, "--batch", str(batch), "-o", model])
    manifest = read_manifest(model)
    init_path = os.path.join(work, "init.safetensors")
    run([args.moec_run, "init", model, "-o", init_path, "--seed", str(args.seed)])
    init = moe_torch.read_safetensors(init_path)
    print(f"spec {args.spec}: torch {torch.__version__}; moec {args.moec}")
    results = []
    if args.weights in ("both", "init"):
        results.append(check(args, spec, model, manifest, init, "init", work))
    if args.weights in ("both", "random"):
        results.append(check(args, spec, model, manifest,
                             moe_torch.randomize(init, args.seed), "random", work))
    ok = all(r[0] for r in results)
    print(f"{'PASS' if ok else 'FAIL'}: max gradient relative difference "
          f"{max(r[1] for r in results):.2e} (limit {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
