#!/usr/bin/env python3
"""PyTorch 2.x CPU baseline for one Mixture-of-Experts layer.

Times one token-choice MoE layer written the way a PyTorch 2.x user would
write it, grouped by expert, and a dense FFN with the same active FLOPs per
token, in eager mode and under ``torch.compile`` (default backend, inductor).
Run it with ``bench/.venv/bin/python`` (made by ``bench/setup-venv.sh``).

The layer, for input x [B, S, D] (each image is its own routing group):

* logits = x @ Wr (Wr [D, E], no bias), gates = softmax over the E experts;
* each token picks its top-k experts (``torch.topk``);
* capacity C = min(S, max(1, ceil(k*S*cf/E))) per image and expert. An
  expert's queue holds all tokens that chose it as 1st choice in token order,
  then the 2nd choices, and so on (V-MoE order); queue positions >= C are
  dropped;
* y[s] = sum over the kept (s, e) of gate[s, e] * FFN_e(x[s]) with
  FFN_e(v) = gelu(v @ W1[e] + b1[e]) @ W2[e] + b2[e], W1 [E, D, H],
  W2 [E, H, D], exact (erf) GELU. Gates are not renormalised; a token whose
  routes were all dropped gets y[s] = 0.

Implementation: the kept (row, expert, gate) lists are computed with tensor
ops over the whole batch (a cumulative sum gives the queue positions), then
sorted by expert; ``bincount(...).tolist()`` gives the group sizes (one host
synchronisation, and a graph break under torch.compile), and each expert
gathers its rows (``index_select``), runs two ``addmm``s, scales by the gate
and adds into the output (``index_add_``).

The dense FFN has hidden width k*H: gelu(x @ W1 + b1) @ W2 + b2.

Measured, each as the median wall time per call (``time.perf_counter``)
after warm-up calls, over at least ``--min-reps`` calls and ``--min-time``
seconds:

* ``*_fwd_*``: forward under ``torch.no_grad()``;
* ``*_fwdbwd_*``: forward, loss = (y * g).sum() with a fixed random g, and
  ``backward()`` to x and all weights (gradients reset to None before each
  call);
* ``*_eager_*`` and ``*_compile_*``: the plain function and
  ``torch.compile(fn)``. Compilation happens in the warm-up calls, its time
  is reported separately (``compile_s``), with dynamo's graph-break count
  (``compile_graph_breaks``; the MoE layer has at least the one at
  ``tolist()``). If torch.compile fails, the error
  is recorded under "errors" instead of a time.

The compiled outputs are compared with eager ones (``check``). ``--self-test``
checks the grouped routing against a per-token loop over experts (float64,
shapes with capacity drops) and exits.

Example:

    bench/.venv/bin/python bench/moe_layer_torch.py --tokens 50 --width 64 \\
        --experts 4 --top-k 2 --expert-hidden 128 --batch 128 \\
        --capacity-factor 1.25 --threads 1 --json out.json

On a GPU (bench/gpu-check.sh): ``--device cuda --dtype bf16`` puts x, g and
the weights on the GPU in bf16 and times each call with CUDA events (from an
idle GPU to the end of the call's last kernel) instead of perf_counter.

Only the Python standard library and torch are used.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def capacity(S, E, k, cf):
    """Per-image, per-expert capacity C = min(S, max(1, ceil(k*S*cf/E)))."""
    return min(S, max(1, math.ceil(k * S * cf / E)))


# ----------------------------------------------------------------- the layer
def route(x, wr, k, cf):
    """Token-choice top-k routing with V-MoE slot filling, per image.

    Returns (rows, experts, gates) of the kept routes, with rows indexing
    x.reshape(B*S, D), sorted by expert (stable: within an expert in queue
    order), and the number of kept routes per expert as a list of ints.
    """
    B, S, _ = x.shape
    E = wr.shape[1]
    C = capacity(S, E, k, cf)
    probs = torch.softmax(x @ wr, dim=-1)                   # [B, S, E]
    top_g, top_e = torch.topk(probs, k, dim=-1)             # [B, S, k]
    # Queue order within an image: rank-major, then token: [B, k*S].
    choice = top_e.transpose(1, 2).reshape(B, k * S)
    gate = top_g.transpose(1, 2).reshape(B, k * S)
    onehot = F.one_hot(choice, E)                           # [B, k*S, E]
    pos = ((onehot.cumsum(dim=1) - 1) * onehot).sum(dim=-1)  # queue position
    keep = (pos < C).reshape(-1)
    token = torch.arange(S, device=x.device).repeat(k)      # [k*S]
    rows = (torch.arange(B, device=x.device).unsqueeze(1) * S + token).reshape(-1)
    rows, experts, gates = rows[keep], choice.reshape(-1)[keep], gate.reshape(-1)[keep]
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=E).tolist()
    return rows[order], experts[order], gates[order], counts


def moe_layer(x, wr, w1, b1, w2, b2, k, cf):
    """One MoE layer, grouped by expert. x [B, S, D] -> [B, S, D]."""
    B, S, D = x.shape
    rows, _, gates, counts = route(x, wr, k, cf)
    xf = x.reshape(B * S, D)
    y = torch.zeros_like(xf)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        idx = rows[start:start + n]
        g = gates[start:start + n]
        start += n
        h = F.gelu(torch.addmm(b1[e], xf.index_select(0, idx), w1[e]))
        out = torch.addmm(b2[e], h, w2[e])
        y.index_add_(0, idx, out * g.unsqueeze(1))
    return y.reshape(B, S, D)


def dense_ffn(x, w1, b1, w2, b2):
    """gelu(x @ W1 + b1) @ W2 + b2, hidden k*H."""
    B, S, D = x.shape
    h = F.gelu(torch.addmm(b1, x.reshape(B * S, D), w1))
    return torch.addmm(b2, h, w2).reshape(B, S, D)


def moe_reference(x, wr, w1, b1, w2, b2, k, cf):
    """Straightforward per-token loop over experts with the same drop rule."""
    B, S, D = x.shape
    E = wr.shape[1]
    C = capacity(S, E, k, cf)
    y = torch.zeros_like(x)
    for b in range(B):
        probs = torch.softmax(x[b] @ wr, dim=-1)
        # k best experts per token, highest gate first, lower index on ties.
        choices = [sorted(range(E), key=lambda e: (-probs[s, e].item(), e))[:k]
                   for s in range(S)]
        filled = [0] * E
        for r in range(k):
            for s in range(S):
                e = choices[s][r]
                if filled[e] < C:
                    filled[e] += 1
                    v = x[b, s]
                    h = F.gelu(v @ w1[e] + b1[e])
                    y[b, s] += probs[s, e] * (h @ w2[e] + b2[e])
    return y


# ------------------------------------------------------------------- helpers
def make_params(D, E, H, k, dtype=torch.float32, seed=0, device=None, to_dtype=None):
    """Draws on the CPU in `dtype`; with `device` / `to_dtype` (--device,
    --dtype), then moves the values there (the same draws on every device)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        t = torch.randn(*shape, generator=gen, dtype=dtype) * scale
        if device is not None or to_dtype is not None:
            t = t.to(device=device, dtype=to_dtype)
        return t.requires_grad_()

    moe = dict(
        wr=rnd(D, E, scale=1 / math.sqrt(D)),
        w1=rnd(E, D, H, scale=1 / math.sqrt(D)),
        b1=rnd(E, H, scale=0.1),
        w2=rnd(E, H, D, scale=1 / math.sqrt(H)),
        b2=rnd(E, D, scale=0.1),
    )
    dense = dict(
        w1=rnd(D, k * H, scale=1 / math.sqrt(D)),
        b1=rnd(k * H, scale=0.1),
        w2=rnd(k * H, D, scale=1 / math.sqrt(k * H)),
        b2=rnd(D, scale=0.1),
    )
    return moe, dense


def time_calls(fn, warmup, min_reps, min_time, cuda=False):
    """Median and count of per-call wall times (ms) after `warmup` calls.

    Returns (median_ms, reps, warmup_s): warmup_s is the time of the warm-up
    calls (for torch.compile, mostly compilation). With `cuda`, each call is
    timed with CUDA events on the current stream, from an idle GPU
    (torch.cuda.synchronize before) to the end of its last kernel."""
    if cuda:
        return _time_calls_cuda(fn, warmup, min_reps, min_time)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, len(times), warmup_s


def _time_calls_cuda(fn, warmup, min_reps, min_time):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        torch.cuda.synchronize()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times), len(times), warmup_s


def self_test():
    """Grouped layer vs the per-token reference, float64, with drops."""
    torch.manual_seed(1)
    ok = True
    for (B, S, D, E, k, H, cf) in [(3, 7, 5, 4, 2, 6, 0.5), (2, 9, 4, 3, 1, 5, 1.0),
                                   (2, 6, 4, 5, 3, 3, 0.3), (2, 5, 3, 2, 2, 4, 2.0)]:
        moe, _ = make_params(D, E, H, k, dtype=torch.float64, seed=B * 100 + S)
        x = torch.randn(B, S, D, dtype=torch.float64) * 2
        wr = (moe["wr"] * 4).detach()          # peaked gates: unequal queues
        args = (wr, moe["w1"], moe["b1"], moe["w2"], moe["b2"], k, cf)
        with torch.no_grad():
            got = moe_layer(x, *args)
            want = moe_reference(x, *args)
            rows, _, _, counts = route(x, wr, k, cf)
        dropped = B * S * k - rows.numel()
        err = (got - want).abs().max().item()
        good = err < 1e-12
        ok &= good
        print(f"self-test B={B} S={S} D={D} E={E} k={k} H={H} cf={cf} "
              f"C={capacity(S, E, k, cf)}: kept {rows.numel()}/{B * S * k} "
              f"(dropped {dropped}), per expert {counts}, max |diff| {err:.2e} "
              f"{'ok' if good else 'FAIL'}")
    # Gradients flow to x and all weights.
    moe, _ = make_params(4, 3, 5, 2, dtype=torch.float64)
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    moe_layer(x, *moe.values(), 2, 1.0).sum().backward()
    missing = [n for n, p in [("x", x), *moe.items()] if p.grad is None]
    if missing:
        ok = False
        print(f"self-test: no gradient for {missing} FAIL")
    print("self-test", "passed" if ok else "FAILED")
    return ok


# ---------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", "-S", type=int, default=50)
    ap.add_argument("--width", "-D", type=int, default=64)
    ap.add_argument("--experts", "-E", type=int, default=4)
    ap.add_argument("--top-k", "-k", type=int, default=2)
    ap.add_argument("--expert-hidden", "-H", type=int, default=128)
    ap.add_argument("--batch", "-B", type=int, default=128)
    ap.add_argument("--capacity-factor", "--cf", type=float, default=1.25)
    ap.add_argument("--threads", "-T", type=int, default=1)
    ap.add_argument("--json", metavar="OUT.json", help="write the results here")
    ap.add_argument("--warmup", type=int, default=3,
                    help="warm-up calls before timing (default 3)")
    ap.add_argument("--min-reps", type=int, default=5,
                    help="at least this many timed calls (default 5)")
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="time each case for at least this many seconds (default 2)")
    ap.add_argument("--no-compile", action="store_true", help="eager mode only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu",
                    help="cpu (default) or cuda: where the layer runs; on cuda "
                         "each call is timed with CUDA events")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="the dtype of x, g and every weight (default fp32; "
                         "bf16: pure bf16 tensors, PyTorch's fastest setup)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the routing against a per-token loop and exit")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    if a.self_test:
        sys.exit(0 if self_test() else 1)

    B, S, D, E, k, H, cf = (a.batch, a.tokens, a.width, a.experts, a.top_k,
                            a.expert_hidden, a.capacity_factor)
    C = capacity(S, E, k, cf)
    on_cuda = a.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda: torch sees no CUDA device")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    moved = a.device != "cpu" or a.dtype != "fp32"
    moe, dense = make_params(D, E, H, k, seed=a.seed,
                             device=a.device if moved else None,
                             to_dtype=dtype if moved else None)
    gen = torch.Generator().manual_seed(a.seed + 1)
    x = torch.randn(B, S, D, generator=gen)
    g = torch.randn(B, S, D, generator=gen)
    if moved:
        x, g = x.to(a.device, dtype), g.to(a.device, dtype)
    x.requires_grad_()
    with torch.no_grad():
        rows, _, _, counts = route(x, moe["wr"], k, cf)
    kept = rows.numel()
    # Active FLOPs of the expert / dense FFN GEMMs (forward).
    moe_gflop = 2 * kept * 2 * D * H / 1e9
    dense_gflop = 2 * B * S * 2 * D * k * H / 1e9

    def moe_fn(x):
        return moe_layer(x, moe["wr"], moe["w1"], moe["b1"], moe["w2"], moe["b2"], k, cf)

    def dense_fn(x):
        return dense_ffn(x, dense["w1"], dense["b1"], dense["w2"], dense["b2"])

    params = {"moe": list(moe.values()), "dense": list(dense.values())}
    results, errors, reps, compile_s, check, graph_breaks = {}, {}, {}, {}, {}, {}
    eager_out = {}

    def fwd(fn):
        def call():
            with torch.no_grad():
                return fn(x)
        return call

    def fwdbwd(fn, ps):
        def call():
            x.grad = None
            for p in ps:
                p.grad = None
            y = fn(x)
            (y * g).sum().backward()
            return y
        return call

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if moved:
        print(f"device {a.device}"
              + (f" ({torch.cuda.get_device_name()})" if on_cuda else "")
              + f", dtype {a.dtype}")
    print(f"shape: B={B} S={S} D={D} E={E} k={k} H={H} cf={cf} C={C}; "
          f"kept {kept}/{B * S * k} routes, per expert {counts}")
    print(f"{'case':<24} {'ms/call':>10} {'GFLOP/s':>8} {'reps':>5} {'warm-up s':>10}")
    for mode in ("eager", "compile"):
        for name, fn in (("moe", moe_fn), ("dense", dense_fn)):
            if mode == "compile":
                if a.no_compile:
                    continue
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
                fn = torch.compile(fn)
            for kind, make in (("fwd", lambda f: fwd(f)),
                               ("fwdbwd", lambda f: fwdbwd(f, [x] + params[name]))):
                key = f"{name}_{kind}_{mode}"
                call = make(fn)
                try:
                    ms, n, warm_s = time_calls(call, a.warmup, a.min_reps, a.min_time,
                                               cuda=on_cuda)
                    out = call().detach()
                except Exception as exc:  # torch.compile failures: report, go on
                    msg = f"{type(exc).__name__}: {exc}".strip()
                    errors[key] = msg[:2000]
                    results[f"{key}_ms"] = None
                    print(f"{key:<24} {'error':>10}  {msg.splitlines()[0][:100]}")
                    continue
                if mode == "eager":
                    eager_out[(name, kind)] = out
                else:
                    graph_breaks[key] = sum(torch._dynamo.utils.counters["graph_break"].values())
                    ref = eager_out[(name, kind)]
                    check[key] = (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
                    compile_s[key] = round(warm_s, 2)
                results[f"{key}_ms"] = round(ms, 4)
                reps[key] = n
                flop = (moe_gflop if name == "moe" else dense_gflop) * (3 if kind == "fwdbwd" else 1)
                print(f"{key:<24} {ms:>10.3f} {flop / ms * 1e3:>8.1f} {n:>5} {warm_s:>10.2f}")
    if check:
        print("graph breaks (cumulative per compiled function): "
              + ", ".join(f"{key} {v}" for key, v in graph_breaks.items()))
        print("compiled vs eager, max |diff| / max |eager|: "
              + ", ".join(f"{key} {v:.1e}" for key, v in check.items()))

    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "shape": {"tokens": S, "width": D, "experts": E, "top_k": k,
                  "expert_hidden": H, "batch": B, "capacity_factor": cf,
                  "capacity": C, "kept_routes": kept, "routes": B * S * k,
                  "kept_per_expert": counts, "dense_hidden": k * H},
        "gflop_fwd": {"moe": round(moe_gflop, 4), "dense": round(dense_gflop, 4)},
        "results": results,
        "errors": errors,
        "reps": reps,
        "compile_s": compile_s,
        "compile_vs_eager_rel_diff": check,
        "compile_graph_breaks": graph_breaks,
        "timing": {"statistic": "median", "warmup": a.warmup,
                   "min_reps": a.min_reps, "min_time_s": a.min_time},
    }
    if moved:
        report["device"] = a.device
        report["dtype"] = a.dtype
        if on_cuda:
            report["gpu"] = torch.cuda.get_device_name()
            report["timing"]["clock"] = "cuda events"
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
