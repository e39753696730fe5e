#!/usr/bin/env python3
"""The whole model, training and inference: moec against PyTorch 2.x (eager
and torch.compile) and PyTorch 1.13 + OpenBLAS, in one run, with moec's
rates as a share of this machine's FMA peak.

For the spec's model (default examples/vimoe-tiny-fmnist.json), on the
same number of threads, from the same initial weights:

* training: images/s of the training step (forward, backward, clipping,
  AdamW; batch = the spec's train.batch) over --steps steps after warm-up:
  moec (`moec-run train`, rate from its log as bench/train_vs_pytorch.py
  reads it), PyTorch 2.x eager and torch.compile (bench/.venv, made by
  bench/setup-venv.sh) and Debian's PyTorch 1.13 (bench/torch_train.py);
* inference: images/s of the forward pass on --images test images: moec
  (`moec-run infer`, at the artifact's batch) and the same three PyTorch
  setups at batch --batch (bench/moe_torch.py's ViMoE under
  inference_mode);
* moec's profile (`--profile`): GFLOP/s of the whole step, of inference
  and of attention, divided by the FMA peak bench/fma_peak.c measures on
  as many threads (compiled here with cc -O2 -march=native).

With --bf16, moec also runs compiled with --precision=bf16 (a second moec
row; the ratios stay against fp32 moec), and its rates are also given as a
share of the bf16 dot-product peak (fma_peak's bf16 mode; only where the
CPU has AVX512-BF16).

PyTorch 1.13's OpenBLAS (0.3.21) runs with OPENBLAS_CORETYPE set to the
core it has for this CPU (--openblas-core, default: SkylakeX on an AVX-512
Intel, Zen on an AMD, Haswell on an AVX2 Intel), since it may not detect a
newer CPU by itself; the run prints which. Each PyTorch setup runs in its
own process. Prints a Markdown table and writes --json.

usage: python3 bench/step_vs_torch.py [--bin build/bin] [--spec SPEC]
           [--threads 1] [--steps 60] [--images 4096] [--batch 256]
           [--openblas-core CORE] [--skip-compile] [--bf16] [--json OUT]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import moec_log  # noqa: E402
VENV_PY = os.path.join(HERE, ".venv", "bin", "python")
DEBIAN_PY = "/usr/bin/python3"


def sh(cmd, env=None, stdout_only=False):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n"
                 f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p.stdout if stdout_only else p.stdout + p.stderr


def cpu_name():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split()
    return (m.group(1) if m else "unknown"), flags


def openblas_core(vendor_model, flags):
    if "avx512f" in flags and "AMD" not in vendor_model:
        return "SkylakeX"
    if "AMD" in vendor_model or "EPYC" in vendor_model or "Ryzen" in vendor_model:
        return "Zen"
    return "Haswell" if "avx2" in flags else "Sandybridge"


def fma_peak(threads, work, bf16=False):
    exe = os.path.join(work, "fma_peak")
    sh(["cc", "-O2", "-march=native", "-ffp-contract=fast", "-pthread", "-o", exe,
        os.path.join(HERE, "fma_peak.c")])
    out = sh([exe, str(threads), "2"] + (["bf16"] if bf16 else []))
    m = re.findall(r"([0-9.]+) GFLOP/s", out)
    if not m:
        sys.exit(f"FAIL: no GFLOP/s in fma_peak's output:\n{out}")
    return float(m[-1]), out.strip()


def profile_rates(text):
    """{op: GFLOP/s} and the total from a moec-run --profile report."""
    total = re.search(r"^profile: .* dispatches, ([0-9.]+) GFLOP/s", text, re.M)
    ops = {}
    for m in re.finditer(r"^  (moe\.\w+|linalg\.\w+)\s+([0-9.]+)\s+[0-9.]+%\s+"
                         r"(\d+)\s+([0-9.]+|-)$", text, re.M):
        if m.group(4) != "-":
            ops[m.group(1)] = (float(m.group(2)), float(m.group(4)))
    return (float(total.group(1)) if total else None), ops


def attention_rate(ops):
    """Seconds-weighted GFLOP/s of the attention ops."""
    secs = flops = 0.0
    for op, (s, rate) in ops.items():
        if op.startswith("moe.attention"):
            secs += s
            flops += s * rate
    return flops / secs if secs else None


def moec_runs(a, work, precision="fp32"):
    model = os.path.join(work, f"model-{precision}.moec")
    init = os.path.join(work, "init.safetensors")
    sh([os.path.join(a.bin, "moec"), "compile", a.spec, "-o", model, "--quiet",
        f"--precision={precision}"])
    if not os.path.exists(init):
        sh([os.path.join(a.bin, "moec-run"), "init", model, "-o", init])
    log = os.path.join(work, f"train-{precision}.jsonl")
    out = sh([os.path.join(a.bin, "moec-run"), "train", model, "--weights", init,
              "--max-steps", str(a.steps + 10), "--threads", str(a.threads),
              "--log", log, "--log-every", "10", "--eval-every-epoch", "off",
              "--profile", "1"])
    train_total, train_ops = profile_rates(out)
    inf = sh([os.path.join(a.bin, "moec-run"), "infer", model, "--weights", init,
              "--limit", str(a.images), "--threads", str(a.threads),
              "--profile", "1"])
    rate = float(re.search(r"throughput: ([0-9.]+) images/s", inf).group(1))
    infer_total, infer_ops = profile_rates(inf)
    return {"train_out": out, "train_log": log, "infer_images_per_s": rate,
            "train_gflops": train_total, "infer_gflops": infer_total,
            "attention_train_gflops": attention_rate(train_ops),
            "attention_infer_gflops": attention_rate(infer_ops),
            "init": init}


def train_rate_from_log(log, batch):
    """images/s of moec-run's train records, the warm-up interval left out."""
    return moec_log.train_rate(moec_log.train_records(log), batch)[0]


def torch_worker(a):
    """In a torch Python: one setup's training and inference rates (JSON)."""
    sys.path.insert(0, HERE)
    import moe_torch
    moe_torch.ensure_torch_python(passive=True)
    import torch
    import torch_train
    spec = moe_torch.parse_spec(a.spec)
    weights = moe_torch.read_safetensors(a.weights)
    data = a.data or spec["data"].get("path") or torch_train.FMNIST_DEFAULT
    r = torch_train.train(a.spec, weights, data, steps=a.steps + 5,
                          threads=a.threads, warmup_steps=5, log=None,
                          compile=a.compile)
    moe_torch.set_threads(a.threads)
    x, _ = torch_train.load_fmnist(data, "t10k")
    x = x[:a.images].float()
    model = moe_torch.ViMoE(spec, weights, dtype=torch.float32)
    fwd = model.forward
    if a.compile:
        fwd = torch.compile(model.forward)
    import time
    with torch.inference_mode():
        for i in range(0, min(x.shape[0], 2 * a.batch), a.batch):
            fwd(x[i:i + a.batch])  # warm-up (and compilation)
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], a.batch):
            fwd(x[i:i + a.batch])
        dt = time.perf_counter() - t0
    print(json.dumps({"torch": torch.__version__,
                      "train_images_per_s": r["images_per_s"],
                      "infer_images_per_s": x.shape[0] / dt,
                      "blas": moe_torch.blas_info()}))


def run_torch(a, python, compile_, core, weights):
    env = dict(os.environ)
    env.pop("MOEC_OPENBLAS_CORETYPE", None)
    if core:
        env["MOEC_OPENBLAS_CORETYPE"] = core
    cmd = [python, os.path.abspath(__file__), "--worker", "--spec", a.spec,
           "--weights", weights, "--threads", str(a.threads),
           "--steps", str(a.steps), "--images", str(a.images),
           "--batch", str(a.batch)]
    if a.data:
        cmd += ["--data", a.data]
    if compile_:
        cmd.append("--compile")
    out = sh(cmd, env=env, stdout_only=True)
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--spec", default=os.path.join(ROOT, "examples", "vimoe-tiny-fmnist.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--data", default=None)
    ap.add_argument("--openblas-core", default=None)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        torch_worker(a)
        return 0
    model_name, flags = cpu_name()
    core = a.openblas_core or openblas_core(model_name, flags)
    with tempfile.TemporaryDirectory() as work:
        peak, peak_out = fma_peak(a.threads, work)
        m = moec_runs(a, work)
        with open(a.spec) as f:
            batch = json.load(f).get("train", {}).get("batch", 128)
        m["train_images_per_s"] = train_rate_from_log(m["train_log"], batch)
        rows = [("moec", m["train_images_per_s"], m["infer_images_per_s"])]
        results = {"cpu": model_name, "threads": a.threads, "fma_peak_gflops": peak,
                   "openblas_core": core, "moec": {k: v for k, v in m.items()
                                                  if k not in ("train_out",)}}
        b = bf16_peak = None
        if a.bf16:
            b = moec_runs(a, work, "bf16")
            b["train_images_per_s"] = train_rate_from_log(b["train_log"], batch)
            rows.append(("moec --precision=bf16", b["train_images_per_s"],
                         b["infer_images_per_s"]))
            results["moec bf16"] = {k: v for k, v in b.items() if k != "train_out"}
            if "avx512_bf16" in flags:
                bf16_peak = fma_peak(a.threads, work, bf16=True)[0]
                results["bf16_dot_peak_gflops"] = bf16_peak
        setups = []
        if os.path.exists(VENV_PY):
            setups.append(("PyTorch 2.x eager", VENV_PY, False, None))
            if not a.skip_compile:
                setups.append(("PyTorch 2.x torch.compile", VENV_PY, True, None))
        else:
            print(f"note: no {VENV_PY} (bench/setup-venv.sh): no PyTorch 2.x")
        setups.append((f"PyTorch 1.13 + OpenBLAS ({core})", DEBIAN_PY, False, core))
        for name, py, comp, c in setups:
            r = run_torch(a, py, comp, c, m["init"])
            name = name.replace("2.x", r["torch"].split("+")[0])
            results[name] = r
            rows.append((name, r["train_images_per_s"], r["infer_images_per_s"]))
    print(f"\n{model_name}, {a.threads} thread(s); FMA peak {peak:.1f} GFLOP/s "
          f"(bench/fma_peak.c)")
    share = lambda g: f"{g:.1f} GFLOP/s = {100 * g / peak:.0f} % of peak" if g else "n/a"
    print(f"moec train_step: {share(m['train_gflops'])}; attention in training: "
          f"{share(m['attention_train_gflops'])}")
    print(f"moec inference: {share(m['infer_gflops'])}; attention in inference: "
          f"{share(m['attention_infer_gflops'])}\n")
    if b:
        dot = lambda g: (f"; {100 * g / bf16_peak:.0f} % of the bf16 dot peak "
                         f"({bf16_peak:.1f})" if g and bf16_peak else "")
        for what, key in (("train_step", "train_gflops"), ("inference", "infer_gflops"),
                          ("attention in training", "attention_train_gflops")):
            print(f"moec --precision=bf16 {what}: {share(b[key])}{dot(b[key])}")
        print()
    for name, r in results.items():
        if isinstance(r, dict) and "blas" in r:
            cfg = [c.lstrip("- ") for c in r["blas"].get("config", [])
                   if "BLAS_INFO" in c or "CPU capability" in c]
            core = (f", OpenBLAS core {r['blas']['openblas_get_corename']}"
                    if "BLAS_INFO=mkl" not in " ".join(cfg)
                    and r["blas"].get("openblas_get_corename") else "")
            print(f"{name}: {'; '.join(cfg)}{core}")
    print()
    print("| setup | training images/s | moec / it | inference images/s | moec / it |")
    print("|---|---|---|---|---|")
    for name, tr, inf in rows:
        rt = f"{rows[0][1] / tr:.2f}x" if tr else "-"
        ri = f"{rows[0][2] / inf:.2f}x" if inf else "-"
        print(f"| {name} | {tr:.1f} | {rt} | {inf:.1f} | {ri} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
