#!/usr/bin/env python3
"""The parts of bench/gpu-check.sh (standard library only).

  gpu_check.py vit-specs OUT            the ViT-S MoE layer specs (moe, dense)
  gpu_check.py parity  --dir D --budget S
  gpu_check.py layer   --dir D --budget S
  gpu_check.py train   --dir D --budget S
  gpu_check.py torch-compile --dir D --budget S   (the PyTorch layer, compiled)
  gpu_check.py report  --dir D          D/results.md from D/work/*.json

`parity`, `layer` and `train` run on the GPU machine with the folder that
`gpu-check.sh prepare` filled (D/bin/moec-run, D/parity, D/models,
D/fmnist; the artifacts already unpacked) and write D/work/NAME.json. Each
child process runs in its own session and is killed with its children when
its share of the budget (seconds) runs out, or when this script gets
SIGTERM (gpu-check.sh's `timeout`). PyTorch runs in child processes under
$TORCH_PYTHON (default python3).

The MoE layer is timed as bench/moe_layer.py times it: the sum of the
per-dispatch times (`moec-run train|infer --profile`) of the kernels named
after the layer (`blocks.0.moe.experts`, `blocks.0.moe.router`; the dense
FFN: `blocks.0.mlp*`), optimizer updates of its parameters left out. With
--profile every dispatch is synchronized, so each includes one launch and
one host wait. Two runs of different lengths are subtracted, which removes
the first call (module loading, cold caches) from the per-call time.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import moe_layer  # noqa: E402  (the ViT-S spec builder and PNG writer)
import moec_log  # noqa: E402

# The ViT-S MoE layer of the issue: 197 tokens, width 384, E 8, top-2,
# expert hidden 1536, capacity factor 1.25, batch 256 (50,432 tokens).
VIT = dict(moe_layer.SHAPES["vit-s"], batch=256)
GOAL_FWD_MS, GOAL_FWDBWD_MS, GOAL_TRAIN_RATIO = 0.60, 2.0, 5.0
# PyTorch on an H100 (/work/shared/GPU-NOTES.md; sort + grouped-mm +
# torch.compile), quoted for reference.
H100_TORCH = "torch.compile 1.21 ms fwd / 3.49 ms fwd+bwd, dense MLP 0.60 ms fwd"

# (file stem, router kind) of parity sets, for folders without
# parity/kinds.tsv; the report follows kinds.tsv's order.
PARITY_KINDS = [
    ("vimoe-tiny-fmnist", "token-choice"),
    ("token-choice-cosine", "token-choice, cosine gate"),
    ("cosine-routers", "cosine gates (token/expert/sinkhorn-EC/...)"),
    ("expert-choice", "expert-choice"),
    ("depth1-expert-choice", "expert-choice (depth 1, shared expert)"),
    ("sinkhorn-fmnist", "sinkhorn"),
    ("sinkhorn-expert-choice", "sinkhorn-expert-choice"),
    ("soft-moe-fmnist", "soft"),
    ("mobile-vmoe-fmnist", "per-image"),
]

_active = []  # the running child, for the SIGTERM handler


def _kill_active(*_):
    for p in _active:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    sys.exit(124)


def run(cmd, timeout, env=None):
    """(rc, output): rc 124 when `timeout` (seconds) ran out; the child and
    its children are killed then."""
    if timeout <= 1:
        return 124, "(no time left)"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True, env=env)
    _active.append(p)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc = 124
        out += f"\n(killed after {timeout:.0f} s)"
    finally:
        _active.remove(p)
    return rc, out


class Budget:
    def __init__(self, seconds):
        self.end = time.time() + seconds

    def left(self, cap=None):
        left = self.end - time.time()
        return left if cap is None else min(cap, left)


def moec_env(work):
    env = dict(os.environ)
    env.setdefault("CUDA_CACHE_PATH", os.path.join(work, "nvcache"))
    env.setdefault("CUDA_CACHE_MAXSIZE", str(4 << 30))
    # Functions load with their module, not in the first timed dispatch.
    env.setdefault("CUDA_MODULE_LOADING", "EAGER")
    return env


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def tail(text, n=1500):
    return text[-n:] if text else ""


# ---------------------------------------------------------------- vit-specs
def vit_specs(out):
    os.makedirs(out, exist_ok=True)
    data = {"dataset": "image-folder", "path": "vit-images"}
    for kind, name in (("fused", "vit-s-moe"), ("dense", "vit-s-dense")):
        s = moe_layer.spec(VIT, kind, data)
        s["name"] = name
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(s, f, indent=1)
            f.write("\n")
    print(f"{out}/vit-s-moe.json, {out}/vit-s-dense.json: {moe_layer.tokens(VIT)} "
          f"tokens, width {VIT['width']}, E {VIT['experts']}, top-{VIT['top_k']}, "
          f"expert hidden {VIT['expert_hidden']}, batch {VIT['batch']}")


# ------------------------------------------------------------------- parity
PARITY_LINE = re.compile(
    r"^(ok|FAIL): (\S+) on cuda: logits (\S+) .*?loss (\S+) vs (\S+) \((\S+),"
    r".*?gradients (\S+) ")


def parity(args):
    budget = Budget(args.budget)
    pdir = os.path.join(args.dir, "parity")
    names = sorted(f[:-len(".parity.json")] for f in os.listdir(pdir)
                   if f.endswith(".parity.json"))
    kinds = dict(PARITY_KINDS)
    tsv = os.path.join(pdir, "kinds.tsv")  # stem, kind, spec (gpu-check.sh prepare)
    if os.path.exists(tsv):
        with open(tsv) as f:
            kinds = dict(line.rstrip("\n").split("\t")[:2] for line in list(f)[1:]
                         if line.strip())
    order = [n for n in kinds if n in names] + [n for n in names if n not in kinds]
    rows = []
    for i, name in enumerate(order):
        # An equal share of what is left, at most 60 s, per model.
        share = budget.left() / (len(order) - i)
        t0 = time.time()
        rc, out = run([sys.executable, os.path.join(ROOT, "test", "e2e", "check_parity.py"),
                       "check", os.path.join(args.dir, "bin"), pdir, "--device", "cuda",
                       "--names", name], min(60, share), env=moec_env(args.work))
        row = {"name": name, "kind": kinds.get(name, "?"), "rc": rc,
               "seconds": round(time.time() - t0, 1)}
        with open(os.path.join(pdir, name + ".parity.json")) as f:
            row["spec"] = json.load(f).get("spec")
        m = None
        for line in out.splitlines():
            m = PARITY_LINE.match(line) or m
        if m:
            row.update(status=m.group(1), logits=float(m.group(3)),
                       loss_cuda=float(m.group(4)), loss_cpu=float(m.group(5)),
                       loss=float(m.group(6)), grads=float(m.group(7)))
        else:
            row.update(status="TIMEOUT" if rc == 124 else "ERROR",
                       output=tail(out))
        print(f"parity {name} ({row['kind']}): {row['status']} in {row['seconds']} s"
              + (f"  logits {row['logits']:.2e} loss {row['loss']:.2e} grads "
                 f"{row['grads']:.2e}" if m else "\n" + tail(out, 800)), flush=True)
        rows.append(row)
    write_json(os.path.join(args.work, "parity.json"), {"rows": rows})
    return 0 if rows and all(r["status"] == "ok" for r in rows) else 1


# -------------------------------------------------------------------- layer
KERNEL_LINE = re.compile(r"^\s+((?:moec|train_step|eval)_k\d+)\s+(\S+)\s+(\S+)\s+"
                         r"([0-9.]+)\s+[0-9.]+%(?:\s+\S+)?\s*$")


def dispatch_times(output):
    """[(kernel, op, name, seconds)] of a --profile report."""
    return [(m.group(1), m.group(2), m.group(3), float(m.group(4)))
            for m in map(KERNEL_LINE.match, output.splitlines()) if m]


def layer_parts(disps, kind, params):
    """Seconds of the layer (moe_layer.py's rule), of its forward kernels
    within train_step (op moe.* without 'grad'), of the whole block FFN
    (norm2 and residual included), and the layer's dispatch count."""
    layer = fwd = block = 0.0
    count = 0
    for _, op, name, secs in disps:
        if name in params:
            continue  # an optimizer update
        if kind == "dense":
            mine = in_block = name.startswith("blocks.0.mlp")
        else:
            mine = name in ("blocks.0.moe.experts", "blocks.0.moe.router")
            in_block = name == "blocks.0.moe" or name.startswith("blocks.0.moe.")
        if mine:
            layer += secs
            count += 1
            if op.startswith("moe.") and "grad" not in op:
                fwd += secs
        if in_block:
            block += secs
    return {"layer": layer, "fwd_in_step": fwd, "block": block, "dispatches": count}


def per_call(short, long_, n_short, n_long):
    """Per-call seconds from two runs' sums: their difference over the
    extra calls (the first call cancels), else the long run's mean."""
    out = {}
    for key in ("layer", "fwd_in_step", "block"):
        if short is not None and n_long > n_short and long_[key] > short[key]:
            out[key] = (long_[key] - short[key]) / (n_long - n_short)
        else:
            out[key] = long_[key] / n_long
    out["dispatches"] = long_["dispatches"]
    out["differenced"] = short is not None and n_long > n_short
    return out


def synthetic_images(root, train, test):
    """root/{train,test}/{a,b}/*.png: random 224x224 RGB images."""
    if os.path.isdir(root):
        return
    size, ch = VIT["image"], VIT["channels"]
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for split, count in (("train", train), ("test", test)):
        for label in ("a", "b"):
            folder = os.path.join(tmp, split, label)
            os.makedirs(folder)
            jobs += [os.path.join(folder, f"{i}.png") for i in range(count // 2)]
    try:
        import multiprocessing
        with multiprocessing.Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.map(_one_png, jobs, chunksize=16)
    except (ImportError, OSError):
        for j in jobs:
            _one_png(j)
    os.rename(tmp, root)


def _one_png(path):
    size, ch = VIT["image"], VIT["channels"]
    moe_layer.png(path, os.urandom(size * size * ch), size, ch)


def layer(args):
    budget = Budget(args.budget)
    work = args.work
    moec_run = os.path.join(args.dir, "bin", "moec-run")
    env = moec_env(work)
    S, D, E, k, H, B = (moe_layer.tokens(VIT), VIT["width"], VIT["experts"],
                        VIT["top_k"], VIT["expert_hidden"], VIT["batch"])
    flops_fwd = 4 * S * D * k * H * B  # 2 S D k H multiply-adds per image
    res = {"shape": {"tokens": S, "width": D, "experts": E, "top_k": k,
                     "expert_hidden": H, "batch": B, "capacity_factor": VIT["cf"]},
           "flops_fwd": flops_fwd, "moec": {}, "errors": {}}
    images = os.path.join(work, "vit-images")
    t0 = time.time()
    # The report prints seconds with 4 decimals: summed over 20 extra calls,
    # a kernel's per-call time is good to ~3 us.
    n_short, n_long = 3, 23           # train steps
    l_short, l_long = 1, 4            # infer batches of 256 images
    synthetic_images(images, train=4 * B, test=l_long * B)
    res["images_s"] = round(time.time() - t0, 1)
    print(f"layer: {4 * B + l_long * B} synthetic images in {res['images_s']} s", flush=True)
    moec_budget = Budget(min(budget.left() - 45, 110))
    remaining = 8  # moec-run invocations
    for kind, stem in (("moe", "vit-s-moe"), ("dense", "vit-s-dense")):
        model = os.path.join(args.dir, "models", stem + ".cuda.moec")
        try:
            params = moe_layer.param_names(os.path.join(args.dir, "bin"), model)
        except SystemExit as e:
            res["errors"][kind] = str(e)[-1500:]
            continue
        runs = {}
        for entry, counts in (("train", (n_short, n_long)), ("infer", (l_short, l_long))):
            for n in counts:
                if entry == "train":
                    cmd = [moec_run, "train", model, "--device", "cuda", "--data", images,
                           "--max-steps", str(n), "--epochs", "1000", "--seed", "0",
                           "--eval-every-epoch", "off", "--profile", "100000"]
                else:
                    cmd = [moec_run, "infer", model, "--device", "cuda", "--data", images,
                           "--limit", str(n * B), "--profile", "100000"]
                t1 = time.time()
                # Twice an equal share of what is left: the first runs also
                # fill the CUDA JIT cache.
                rc, out = run(cmd, min(moec_budget.left(), 2 * moec_budget.left() / remaining),
                              env=env)
                remaining -= 1
                disps = dispatch_times(out) if rc == 0 else []
                print(f"layer: moec {kind} {entry} x{n}: rc {rc}, {len(disps)} kernel "
                      f"lines, {time.time() - t1:.1f} s", flush=True)
                if rc != 0 or not disps:
                    res["errors"][f"{kind}_{entry}_{n}"] = tail(out)
                    print(tail(out, 1200), flush=True)
                    runs[(entry, n)] = None
                else:
                    runs[(entry, n)] = layer_parts(disps, kind, params)
        row = {}
        for entry, (a, b) in (("train", (n_short, n_long)), ("infer", (l_short, l_long))):
            if runs.get((entry, b)) is not None:
                row[entry] = per_call(runs.get((entry, a)), runs[(entry, b)], a, b)
        res["moec"][kind] = row
    # PyTorch eager here; torch.compile (slow to compile) is the last part
    # of gpu-check.sh, with whatever time is left (torch_compile).
    rc, out, torch_res = torch_layer(work, "eager", budget.left(60) - 2)
    if torch_res is None:
        res["errors"]["torch_eager"] = tail(out)
    res["torch"] = torch_res
    write_json(os.path.join(work, "layer.json"), res)
    ok = all(res["moec"].get(kind, {}).get(e) for kind in ("moe", "dense")
             for e in ("train", "infer")) and torch_res is not None
    return 0 if ok else 1


def torch_layer(work, label, timeout):
    """bench/moe_layer_torch.py on the GPU in bf16 at the ViT-S shape:
    (rc, output, its JSON or None)."""
    S, D, E, k, H, B = (moe_layer.tokens(VIT), VIT["width"], VIT["experts"],
                        VIT["top_k"], VIT["expert_hidden"], VIT["batch"])
    py = os.environ.get("TORCH_PYTHON", "python3")
    out_json = os.path.join(work, f"torch-layer-{label}.json")
    if os.path.exists(out_json):
        os.remove(out_json)
    cmd = [py, os.path.join(HERE, "moe_layer_torch.py"), "--device", "cuda",
           "--dtype", "bf16", "--tokens", str(S), "--width", str(D), "--experts",
           str(E), "--top-k", str(k), "--expert-hidden", str(H), "--batch", str(B),
           "--capacity-factor", str(VIT["cf"]), "--threads", "4", "--warmup", "3",
           "--min-reps", "10", "--min-time", "0.3", "--json", out_json]
    if label == "eager":
        cmd.append("--no-compile")
    t1 = time.time()
    rc, out = run(cmd, timeout)
    print(f"PyTorch layer ({label} run): rc {rc}, {time.time() - t1:.1f} s", flush=True)
    print(tail(out, 1500), flush=True)
    res = None
    if rc == 0 and os.path.exists(out_json):
        with open(out_json) as f:
            res = json.load(f)
    return rc, out, res


def torch_compile(args):
    """The PyTorch layer under torch.compile (and eager again)."""
    rc, out, res = torch_layer(args.work, "compile", Budget(args.budget).left() - 2)
    if res is None:
        write_json(os.path.join(args.work, "torch-layer-compile.error.json"),
                   {"rc": rc, "output": tail(out)})
    return 0 if res is not None and not res.get("errors") else 1


# -------------------------------------------------------------------- train
def train(args):
    budget = Budget(args.budget)
    work = args.work
    fm = os.path.join(work, "fmnist")
    src = os.path.join(args.dir, "fmnist")
    os.makedirs(fm, exist_ok=True)
    full = os.path.exists(os.path.join(src, "train-images-idx3-ubyte.gz"))
    for part in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        for split in ("train", "t10k"):
            dst = os.path.join(fm, f"{split}-{part}")
            origin = os.path.join(src, f"{split if full else 't10k'}-{part}")
            if not os.path.exists(dst):
                os.symlink(os.path.abspath(origin), dst)
    res = {"training_data": "Fashion-MNIST train (60k)" if full else
           "Fashion-MNIST t10k (10k images) used as the training set: a timing "
           "run, not an accuracy run"}
    spec = os.path.join(ROOT, "examples", "vimoe-tiny-fmnist.json")
    with open(spec) as f:
        batch = json.load(f)["train"]["batch"]
    res["batch"] = batch
    log = os.path.join(work, "vimoe-tiny.train.jsonl")
    if os.path.exists(log):
        os.remove(log)
    steps = args.moec_steps
    t0 = time.time()
    rc, out = run([os.path.join(args.dir, "bin", "moec-run"), "train",
                   os.path.join(args.dir, "models", "vimoe-tiny.cuda.moec"),
                   "--device", "cuda", "--data", fm, "--max-steps", str(steps),
                   "--epochs", "100", "--log", log, "--log-every", "20",
                   "--eval-every-epoch", "off", "--seed", "0"],
                  budget.left(60), env=moec_env(work))
    print(f"train: moec-run train rc {rc}, {time.time() - t0:.1f} s", flush=True)
    print(tail(out, 800), flush=True)
    res["moec_rc"] = rc
    rate, timed = None, 0
    if os.path.exists(log):
        try:
            rate, timed = moec_log.train_rate(moec_log.train_records(log), batch)
        except (ValueError, KeyError, json.JSONDecodeError):
            pass
    res["moec_images_per_s"], res["moec_timed_steps"] = rate, timed
    if rc != 0:
        res["moec_error"] = tail(out)
    py = os.environ.get("TORCH_PYTHON", "python3")
    tj = os.path.join(work, "torch-train.json")
    t0 = time.time()
    rc2, out2 = run([py, os.path.join(HERE, "gpu_check_torch_train.py"), "--device", "cuda",
                     "--data", fm, "--steps", str(args.torch_steps), "--warmup", "5",
                     "--amp", "off,bf16", "--json", tj], budget.left() - 2)
    print(f"train: PyTorch eager rc {rc2}, {time.time() - t0:.1f} s", flush=True)
    print(tail(out2, 1200), flush=True)
    res["torch"] = None
    if os.path.exists(tj):
        with open(tj) as f:
            res["torch"] = json.load(f)
    else:
        res["torch_error"] = tail(out2)
    write_json(os.path.join(work, "train.json"), res)
    return 0 if rate and res["torch"] and rc2 == 0 else 1


# ------------------------------------------------------------------- report
def fmt(v, spec=".2f", none="n/a"):
    return none if v is None else format(v, spec)


def report(args):
    work = args.work
    lines = []
    add = lines.append

    def load(name):
        p = os.path.join(work, name)
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f)
        return None

    gpu = "unknown GPU"
    p = os.path.join(work, "gpu.txt")
    if os.path.exists(p):
        with open(p) as f:
            gpu = f.read().strip()
    manifest = os.path.join(args.dir, "MANIFEST.txt")
    built = ""
    if os.path.exists(manifest):
        with open(manifest) as f:
            for line in f:
                if line.startswith(("prepared:", "commit:", "gpu arch:")):
                    built += line.strip() + "; "
    add("# moec GPU check")
    add("")
    add(f"{gpu}")
    add("")
    add(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {built}")
    add("")
    status = []
    p = os.path.join(work, "status.tsv")
    if os.path.exists(p):
        with open(p) as f:
            status = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if status:
        add("| part | result | seconds |")
        add("|---|---|---|")
        for part, rc, secs in status:
            word = {"0": "ok", "124": "TIMEOUT", "137": "TIMEOUT (killed)"}.get(rc, f"FAILED (rc {rc})")
            add(f"| {part} | {word} | {secs} |")
        add("")

    par = load("parity.json")
    if par:
        add("## Parity: cuda (bf16 GEMMs) against cpu fp32, same weights and batch")
        add("")
        add("Limits: logits 1e-2, loss 1e-2, gradients 5e-2 (relative).")
        add("")
        add("| router kind | spec | result | logits | loss | gradients | s |")
        add("|---|---|---|---|---|---|---|")
        for r in par["rows"]:
            add(f"| {r['kind']} | {r.get('spec')} | {r['status']} | "
                f"{fmt(r.get('logits'), '.2e')} | {fmt(r.get('loss'), '.2e')} | "
                f"{fmt(r.get('grads'), '.2e')} | {r['seconds']} |")
        add("")

    lay = load("layer.json")
    if lay:
        sh = lay["shape"]
        ff = lay["flops_fwd"]
        add(f"## One MoE layer: {sh['tokens']} tokens x batch {sh['batch']}, width "
            f"{sh['width']}, E {sh['experts']}, top-{sh['top_k']}, expert hidden "
            f"{sh['expert_hidden']}, cf {sh['capacity_factor']}")
        add("")
        add(f"Work counted: 4 S D k H per image forward = {ff / 1e9:.1f} GFLOP per "
            f"batch, x3 for forward + backward. Goals: forward <= {GOAL_FWD_MS} ms, "
            f"forward + backward <= {GOAL_FWDBWD_MS} ms. PyTorch on an H100 "
            f"(GPU-NOTES.md): {H100_TORCH}.")
        add("")
        add("| | fwd ms (infer) | fwd ms (in train_step) | fwd+bwd ms | fwd TFLOP/s | "
            "fwd+bwd TFLOP/s | dispatches (train_step) |")
        add("|---|---|---|---|---|---|---|")

        def tf(flops, ms):
            return fmt(flops / (ms * 1e-3) * 1e-12 if ms else None, ".0f")

        moec = lay["moec"]
        for kind, label in (("moe", "moec MoE layer (router + experts)"),
                            ("dense", "moec dense FFN, hidden k x H (+ norm2, residual)")):
            row = moec.get(kind) or {}
            tr, inf = row.get("train"), row.get("infer")
            fwd = inf["layer"] * 1e3 if inf else None
            fis = tr["fwd_in_step"] * 1e3 if tr else None
            fb = tr["layer"] * 1e3 if tr else None
            add(f"| {label} | {fmt(fwd, '.3f')} | {fmt(fis, '.3f')} | {fmt(fb, '.3f')} | "
                f"{tf(ff, fwd)} | {tf(3 * ff, fb)} | {tr['dispatches'] if tr else 'n/a'} |")
            if kind == "moe" and tr:
                add(f"| moec MoE block FFN (+ norm2, residual) | "
                    f"{fmt(inf['block'] * 1e3 if inf else None, '.3f')} | | "
                    f"{fmt(tr['block'] * 1e3, '.3f')} | | | |")
        t = dict((lay.get("torch") or {}).get("results", {}))
        comp = load("torch-layer-compile.json")
        if comp:  # torch.compile rows from the last part
            t.update({key: v for key, v in comp.get("results", {}).items()
                      if "_compile_" in key})
            for key, err in comp.get("errors", {}).items():
                lay.setdefault("errors", {})[key] = err
        cerr = load("torch-layer-compile.error.json")
        if cerr:
            lay.setdefault("errors", {})["torch_compile"] = cerr["output"]
        for key, label in (("moe", "PyTorch MoE (per-expert loop), bf16"),
                           ("dense", "PyTorch dense FFN, bf16")):
            for mode in ("eager", "compile"):
                fwd, fb = t.get(f"{key}_fwd_{mode}_ms"), t.get(f"{key}_fwdbwd_{mode}_ms")
                if fwd is None and fb is None:
                    continue
                add(f"| {label}, {mode} | {fmt(fwd, '.3f')} | | {fmt(fb, '.3f')} | "
                    f"{tf(ff, fwd)} | {tf(3 * ff, fb)} | |")
        add("")
        m = (moec.get("moe") or {})
        if m.get("train") and m.get("infer"):
            fwd, fis, fb = (m["infer"]["layer"] * 1e3, m["train"]["fwd_in_step"] * 1e3,
                            m["train"]["layer"] * 1e3)
            add(f"Goals: forward {fwd:.3f} ms (infer) / {fis:.3f} ms (train_step's "
                f"forward kernels) vs {GOAL_FWD_MS} ms: "
                f"{'met' if min(fwd, fis) <= GOAL_FWD_MS else 'NOT met'}; forward + "
                f"backward {fb:.3f} ms vs {GOAL_FWDBWD_MS} ms: "
                f"{'met' if fb <= GOAL_FWDBWD_MS else 'NOT met'}.")
            ratios = []
            for key in ("moe_fwd_compile_ms", "moe_fwd_eager_ms"):
                if t.get(key):
                    ratios.append(f"PyTorch {key[8:-3]} fwd / moec {t[key] / fwd:.2f}x")
            for key in ("moe_fwdbwd_compile_ms", "moe_fwdbwd_eager_ms"):
                if t.get(key):
                    ratios.append(f"PyTorch {key[11:-3]} fwd+bwd / moec {t[key] / fb:.2f}x")
            d = moec.get("dense") or {}
            if d.get("train") and d.get("infer"):
                ratios.append(f"moec MoE / moec dense: fwd "
                              f"{fwd / (d['infer']['layer'] * 1e3):.2f}, fwd+bwd "
                              f"{fb / (d['train']['layer'] * 1e3):.2f}")
            if ratios:
                add("Ratios (time, > 1: moec faster): " + "; ".join(ratios) + ".")
            add("")
            add(f"moec times: sum of the layer's per-dispatch times under --profile "
                f"(each dispatch synchronized: one launch + host wait included per "
                f"dispatch), per call as the difference of a "
                f"{'short and a long run' if m['train']['differenced'] else 'single run'}"
                f". The infer entry runs in chunks of 32 images "
                f"(runtime/lib/Session.cpp kChunk); 'in train_step' is the layer's "
                f"forward kernels of train_step at the full batch.")
        if (lay.get("torch") or {}).get("torch"):
            tt = lay["torch"]
            add(f"PyTorch {tt['torch']} on {tt.get('gpu', tt.get('device', 'cpu'))}, "
                f"{tt.get('dtype', 'fp32')}, {tt['timing'].get('clock', 'wall-clock')} "
                f"medians; compile graph breaks "
                f"{(comp or {}).get('compile_graph_breaks')}, compile seconds "
                f"{(comp or {}).get('compile_s')}; "
                f"kept routes {tt['shape']['kept_routes']}/{tt['shape']['routes']}.")
        for key, err in lay.get("errors", {}).items():
            add(f"- error {key}: `{err.strip().splitlines()[-1][:200] if err.strip() else ''}`")
        add("")

    tr = load("train.json")
    if tr:
        add(f"## ViMoE-Tiny training step (examples/vimoe-tiny-fmnist.json, batch "
            f"{tr.get('batch')})")
        add("")
        add(f"Data: {tr['training_data']}.")
        add("")
        add("| | images/s | moec / this |")
        add("|---|---|---|")
        mr = tr.get("moec_images_per_s")
        add(f"| moec-run train --device cuda ({tr.get('moec_timed_steps')} timed steps) "
            f"| {fmt(mr, '.0f')} | |")
        best = None
        for mode, r in ((tr.get("torch") or {}).get("results") or {}).items():
            rate = r.get("images_per_s")
            label = "fp32" if mode == "off" else "bf16 autocast"
            if rate:
                best = max(best or 0, rate)
            add(f"| PyTorch eager, {label} ({(tr.get('torch') or {}).get('steps')} steps) | "
                f"{fmt(rate, '.0f', r.get('error', 'n/a')[:80])} | "
                f"{fmt(mr / rate, '.2f') + 'x' if mr and rate else 'n/a'} |")
        add("")
        if mr and best:
            add(f"Goal: moec >= {GOAL_TRAIN_RATIO}x PyTorch eager (best of fp32 and "
                f"bf16 autocast): {mr / best:.2f}x, "
                f"{'met' if mr / best >= GOAL_TRAIN_RATIO else 'NOT met'}.")
        for key in ("moec_error", "torch_error"):
            if tr.get(key):
                add(f"- {key}: `{tr[key].strip().splitlines()[-1][:200]}`")
        add("")
    text = "\n".join(lines)
    with open(os.path.join(args.dir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["vit-specs", "parity", "layer", "train",
                                        "torch-compile", "report"])
    ap.add_argument("out", nargs="?", help="vit-specs: the output folder")
    ap.add_argument("--dir", default=os.path.join(HERE, "gpu-check"))
    ap.add_argument("--budget", type=float, default=120, help="seconds for this part")
    ap.add_argument("--moec-steps", type=int, default=400)
    ap.add_argument("--torch-steps", type=int, default=60)
    args = ap.parse_args()
    if args.command == "vit-specs":
        if not args.out:
            ap.error("vit-specs OUT")
        vit_specs(args.out)
        return 0
    args.dir = os.path.abspath(args.dir)
    args.work = os.path.join(args.dir, "work")
    os.makedirs(args.work, exist_ok=True)
    signal.signal(signal.SIGTERM, _kill_active)
    return {"parity": parity, "layer": layer, "train": train,
            "torch-compile": torch_compile, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
