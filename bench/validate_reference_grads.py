#!/usr/bin/env python3
"""Validates moec-reference's training mode against PyTorch autograd.

For each spec: random weights (larger than the init, so routing is decisive)
and a random batch (images, labels, standard normal router noise), then

  * `moec-reference loss` vs ViMoETrain (bench/moe_torch.py, float64): the
    loss and each of its parts;
  * `moec-reference fdgrad` (central finite differences in double) vs the
    float64 autograd gradients: per tensor ||g - fd|| / ||fd|| over the
    sampled entries (entries whose +-h step changed a routing decision are
    flagged by the reference and skipped).

Both sides implement test/reference/README.md independently; they must agree
to --tol (default 1e-6) relative.

usage: env -u OPENBLAS_CORETYPE /usr/bin/python3 bench/validate_reference_grads.py
           --reference build/bin/moec-reference [SPEC ...] [--batch 4]
           [--per-tensor all|K] [--seed S] [--tol 1e-6] [--work DIR]
       (default specs: test/e2e/specs-train/*.json)
"""
import argparse
import glob
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

ROOT = os.path.dirname(HERE)


def make_case(spec, batch, seed):
    """(weights {name: f32 tensor}, batch {name: tensor}) for `spec`."""
    gen = torch.Generator().manual_seed(seed)
    shapes = moe_torch.param_shapes(spec)
    init = {n: torch.zeros(sh) for n, sh in shapes.items()}
    weights = moe_torch.randomize(init, seed)
    C, H, W = spec["C"], spec["H"], spec["W"]
    b = {"images": torch.randn(batch, C, H, W, generator=gen),
         "labels": torch.randint(0, spec["K"], (batch,), generator=gen,
                                 dtype=torch.int64).to(torch.int32)}
    for name, sh in moe_torch.noise_shapes(spec, batch).items():
        b[name] = torch.randn(*sh, generator=gen)
    return weights, b


def rel(a, b):
    d = float((a - b).norm())
    n = float(b.norm())
    return d / n if n > 0 else d


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}\n{p.stderr}")
    return p.stdout


def check_spec(path, args, work):
    spec = moe_torch.parse_spec(path)
    name = os.path.splitext(os.path.basename(path))[0]
    weights, batch = make_case(spec, args.batch, args.seed)
    wpath = os.path.join(work, name + ".w.safetensors")
    bpath = os.path.join(work, name + ".batch.safetensors")
    fpath = os.path.join(work, name + ".fd.safetensors")
    moe_torch.write_safetensors(wpath, weights)
    moe_torch.write_safetensors(bpath, batch)

    ref = json.loads(run([args.reference, "loss", path, wpath, bpath]))
    tm = moe_torch.ViMoETrain(spec, weights, dtype=torch.float64)
    noise = {k: v for k, v in batch.items() if k.startswith("noise.")}
    out = tm.loss(batch["images"], batch["labels"], noise)
    worst = 0.0
    lines = []
    for key in ("loss", "ce_loss", "aux_loss", "importance", "load", "balance",
                "z_loss", "super_class"):
        if key not in out:
            continue
        t, r = float(out[key]), float(ref[key])
        e = abs(t - r) / max(abs(r), 1e-300) if r != 0 else abs(t)
        worst = max(worst, e)
        lines.append(f"{key} {r:.10g} (rel {e:.1e})")
    if int(out["correct"]) != ref["correct"]:
        lines.append(f"correct differs: torch {int(out['correct'])} ref {ref['correct']}")
        worst = math.inf
    rm = ref["routing_margin"]
    rm = math.inf if rm is None else rm
    if not (rm == tm.margin or abs(rm - tm.margin) <= 1e-9 * abs(rm)):
        lines.append(f"routing margin differs: torch {tm.margin} ref {rm}")
        worst = math.inf
    print(f"{name}: routing margin {rm:.3g}: " + "; ".join(lines))

    summary = json.loads(run([args.reference, "fdgrad", path, wpath, bpath, fpath,
                              "--per-tensor", args.per_tensor, "--h", str(args.h),
                              "--seed", str(args.seed)]))
    fd = moe_torch.read_safetensors(fpath, all_dtypes=True)
    names = list(tm.params)
    grads = torch.autograd.grad(out["loss"], [tm.params[n] for n in names],
                                allow_unused=True)
    gmax, worst_name, skipped, total = 0.0, "", 0, 0
    for n, g in zip(names, grads):
        g = torch.zeros_like(tm.params[n]) if g is None else g
        idx = fd[f"fd.{n}.index"].long()
        flag = fd[f"fd.{n}.flag"]
        val = fd[f"fd.{n}.value"]
        ok = flag == 0
        skipped += int((~ok).sum())
        total += int(ok.sum())
        gi = g.reshape(-1)[idx[ok]]
        fv = val[ok]
        if fv.numel() == 0:
            continue
        # Tensors whose sampled gradient is ~0 (e.g. an expert no token
        # reached): compare absolutely against the global scale.
        e = rel(gi, fv) if float(fv.norm()) > 1e-9 else float((gi - fv).norm())
        if args.verbose:
            print(f"  {n}: rel {e:.2e} |fd| {float(fv.norm()):.3e} ({fv.numel()} entries)")
        if e > gmax:
            gmax, worst_name = e, n
    print(f"  gradients: {total} FD entries ({skipped} flagged and skipped), "
          f"max per-tensor rel err {gmax:.2e} ({worst_name}); "
          f"FD flagged {summary['fd_flagged']}")
    return max(worst, gmax)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*")
    ap.add_argument("--reference", default=os.path.join(ROOT, "build/bin/moec-reference"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--per-tensor", default="all")
    ap.add_argument("--h", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--work")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = args.specs or sorted(glob.glob(os.path.join(ROOT, "test/e2e/specs-train/*.json")))
    work = args.work or tempfile.mkdtemp(prefix="moec-refgrad-")
    os.makedirs(work, exist_ok=True)
    worst = 0.0
    failed = []
    for s in specs:
        e = check_spec(s, args, work)
        worst = max(worst, e)
        if not e < args.tol:
            failed.append(os.path.basename(s))
    print(f"{'PASS' if not failed else 'FAIL'}: worst relative difference {worst:.2e} "
          f"(tolerance {args.tol:g})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
