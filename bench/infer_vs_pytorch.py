#!/usr/bin/env python3
"""moec vs PyTorch: CPU inference correctness and speed on one spec.

usage: infer_vs_pytorch.py --bin BIN_DIR --spec SPEC [--batch 256]
           [--threads 2] [--images 2560] [--seed 0] [--data DIR]

1. Compiles SPEC with `BIN/moec compile --batch B` and writes moec's random
   initial weights with `BIN/moec-run init --seed S`.
2. Images: the first N Fashion-MNIST test images (normalized like moec) when
   the spec is a 1x28x28 fashion-mnist model and the data set is found, else
   N(0, 1) noise.
3. Correctness: logits of `BIN/moec-run run` vs bench/moe_torch.py (float32)
   on the same weights and images, ||moec - torch|| / ||torch|| < --tol
   (1e-4), for moec's initial weights and for larger random weights (so
   that routing and attention are not trivial). A failing check compares
   the worst images with the fp64 `BIN/moec-reference`, to tell which side
   is wrong. Exits with status 1 if a check fails.
4. Speed, alternating moec and PyTorch in rounds: moec's images/s is the
   `throughput:` line of `moec-run infer` (its timed inference loop only;
   fashion-mnist specs), or else the wall time of `moec-run run` on N images
   minus that on B images. PyTorch runs in child processes with
   OPENBLAS_CORETYPE unset: warm-up batches, then one timed pass over the
   same N images at batch B per round; it is timed in a few thread
   configurations (torch's OpenMP threads x OpenBLAS threads, none using more
   than T threads at once) and the ratio uses the best one.

This script needs only the Python standard library; PyTorch runs in a child
interpreter that can import torch (this one, else /usr/bin/python3, or
--python).
"""

import argparse
import array
import gzip
import json
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_torch  # noqa: E402  (parse_spec needs no torch)

MOE_TORCH = os.path.join(HERE, "moe_torch.py")
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def log(*a):
    print(*a, flush=True)


def die(msg):
    print(f"infer_vs_pytorch: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---------------------------------------------------------------------------
# Running things
# ---------------------------------------------------------------------------


class Tools:
    """The moec binaries. They are copied into the work directory first, so
    that a rebuild of BIN during the run cannot mix two versions; a binary
    that is momentarily missing (being rebuilt) is waited for."""

    NAMES = ("moec", "moec-run", "moec-reference")

    def __init__(self, bin_dir, wait_s):
        self.bin = os.path.abspath(bin_dir)
        self.wait_s = wait_s
        self.snap = None
        self.built = {}

    def _wait(self, p, optional=False):
        deadline = time.time() + (min(self.wait_s, 30) if optional else self.wait_s)
        while not (os.path.isfile(p) and os.access(p, os.X_OK)):
            if time.time() > deadline:
                if optional:
                    return False
                die(f"{p} not found")
            log(f"  (waiting for {p} to reappear)")
            time.sleep(5)
        return True

    def snapshot(self, dest):
        os.makedirs(dest, exist_ok=True)
        for name in self.NAMES:
            src = os.path.join(self.bin, name)
            if not self._wait(src, optional=name == "moec-reference"):
                continue
            # Wait until the file has stopped changing (a link in progress).
            while time.time() - os.path.getmtime(src) < 3:
                time.sleep(1)
            self.built[name] = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                             time.gmtime(os.path.getmtime(src)))
            shutil.copy2(src, os.path.join(dest, name))
        self.snap = dest

    def path(self, name):
        if self.snap and os.path.isfile(os.path.join(self.snap, name)):
            return os.path.join(self.snap, name)
        p = os.path.join(self.bin, name)
        self._wait(p)
        return p

    def run(self, name, *args, retries=3):
        """Runs BIN/name args; returns (stdout, stderr, wall seconds)."""
        for attempt in range(retries):
            cmd = [self.path(name)] + [str(a) for a in args]
            t0 = time.perf_counter()
            try:
                p = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:  # e.g. replaced while starting
                err = str(e)
            else:
                wall = time.perf_counter() - t0
                if p.returncode == 0:
                    return p.stdout, p.stderr, wall
                err = (p.stderr or p.stdout).strip()
                # A binary being replaced shows up as missing files or a
                # failed exec; anything else is a real error.
                if os.path.isfile(cmd[0]) and p.returncode not in (126, 127):
                    break
            time.sleep(5)
        die(f"{' '.join(cmd)} failed:\n{err}")


def find_torch_python(explicit):
    cands = [explicit] if explicit else [sys.executable, "/usr/bin/python3"]
    for py in cands:
        if py and subprocess.run([py, "-c", "import torch"], capture_output=True,
                                 env=torch_env(1, 1)).returncode == 0:
            return py
    die("no Python that can import torch (install python3-torch: bench/setup.sh)")


def torch_env(omp, blas, passive=False):
    """The environment of a PyTorch child: OPENBLAS_CORETYPE unset (it would
    force OpenBLAS onto its AVX2 kernels)."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env["OMP_NUM_THREADS"] = str(omp)
    env["OPENBLAS_NUM_THREADS"] = str(blas)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def torch_run(py, threads, *args):
    cmd = [py, MOE_TORCH] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=torch_env(threads, threads))
    if p.returncode != 0:
        die(f"{' '.join(cmd)} failed:\n{p.stderr.strip()}")
    return p.stdout


class TorchServer:
    """A moe_torch.py 'serve' child: warmed up, one timed pass per time()."""

    def __init__(self, py, spec, weights, images, batch, warmup, omp, blas, passive, split):
        if split > 1:
            self.name = f"batch split over {split} threads, 1 thread each"
        else:
            self.name = f"omp {omp} x blas {blas}" + (", OMP_WAIT_POLICY=PASSIVE"
                                                       if passive else "")
        cmd = [py, MOE_TORCH, "serve", spec, weights, images, "--batch", str(batch),
               "--threads", str(omp), "--blas-threads", str(blas),
               "--warmup", str(warmup), "--split", str(split)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=torch_env(omp, blas, passive))
        ready = self._read()
        self.info = ready.get("info", {})
        self.rates = []

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            die(f"PyTorch child ({self.name}) exited with status {self.p.returncode}")
        return json.loads(line)

    def time(self):
        self.p.stdin.write("time\n")
        self.p.stdin.flush()
        r = self._read()
        rate = r["images"] / r["seconds"]
        self.rates.append(rate)
        return rate

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        self.p.wait()


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def fmnist_dir(args, spec):
    s = spec
    if (s["C"], s["H"], s["W"]) != (1, 28, 28):
        return None
    if s["data"].get("dataset", "fashion-mnist") != "fashion-mnist":
        return None
    for d in ([args.data] if args.data else [s["data"].get("path"), FMNIST_DEFAULT]):
        if d and any(os.path.isfile(os.path.join(d, "t10k-images-idx3-ubyte" + z))
                     for z in ("", ".gz")):
            return os.path.abspath(d)
    return None


def fmnist_images(d, n):
    """The first n test images, normalized as moec does in float32:
    (pixel/255 - 0.2860) * (1/0.3530)."""
    path = os.path.join(d, "t10k-images-idx3-ubyte")
    opener = open
    if not os.path.isfile(path):
        path, opener = path + ".gz", gzip.open
    with opener(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051 or (rows, cols) != (28, 28):
            die(f"{path}: not an idx3 file of 28x28 images")
        n = min(n, count)
        raw = f.read(n * 784)
    mean, scale = f32(FMNIST_MEAN), f32(1.0 / f32(FMNIST_STD))
    lut = [f32(f32(f32(p) / 255.0) - mean) for p in range(256)]
    lut = [f32(v * scale) for v in lut]
    return array.array("f", (lut[b] for b in raw)), n


def noise_images(n, per, seed):
    import random
    rng = random.Random(seed)
    return array.array("f", (rng.gauss(0.0, 1.0) for _ in range(n * per)))


def write_f32(path, arr):
    a = array.array("f", arr)
    if sys.byteorder != "little":
        a.byteswap()
    with open(path, "wb") as f:
        f.write(a.tobytes())


def read_f32(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def rel_diff(a, b):
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    den = math.sqrt(sum(y * y for y in b))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


# ---------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------


NEAR_TIE = 1e-5  # routing margin (gate gap) below which float32 may flip


def check(tools, py, args, spec, model, weights, images, n, work, tag):
    """moec-run run vs PyTorch logits; returns (rel diff, ok, note)."""
    K = spec["K"]
    slug = tag.replace(" ", "-")
    mo = os.path.join(work, f"logits-moec-{slug}.f32")
    pt = os.path.join(work, f"logits-torch-{slug}.f32")
    tools.run("moec-run", "run", model, "--weights", weights, "--input", images,
              "--output", mo, "--threads", args.threads)
    torch_run(py, args.threads, "logits", args.spec, weights, images, pt,
              "--batch", args.batch, "--threads", args.threads)
    a, b = read_f32(mo), read_f32(pt)
    if len(a) != n * K or len(b) != n * K:
        die(f"logits sizes {len(a)} (moec), {len(b)} (torch), expected {n * K}")
    rd = rel_diff(a, b)
    agree = sum(
        max(range(K), key=lambda c: a[i * K + c]) == max(range(K), key=lambda c: b[i * K + c])
        for i in range(n))
    scale = math.sqrt(sum(y * y for y in b) / len(b))
    ok, note = rd < args.tol, ""
    log(f"  {tag:<14} rel diff {rd:.3e}  ({'ok' if ok else 'over'}, tol {args.tol:g}); "
        f"top-1 agreement {agree}/{n}; logits rms {scale:.3g}")
    if not ok:
        ok, note = explain(tools, py, args, spec, weights, images, a, b, n, work, slug)
    return rd, ok, note


def explain(tools, py, args, spec, weights, images, a, b, n, work, slug, worst=8):
    """After a failed check: finds the images that differ, measures their
    routing margins (PyTorch, float64) and compares the worst with the fp64
    moec-reference. Images whose routing has a near tie (margin < NEAR_TIE)
    may legitimately route differently in two float32 implementations: the
    check passes if the other images agree. Returns (ok, note)."""
    K, per = spec["K"], spec["C"] * spec["H"] * spec["W"]
    per_img = sorted(((rel_diff(a[i * K:(i + 1) * K], b[i * K:(i + 1) * K]), i)
                      for i in range(n)), reverse=True)
    bad = [i for r, i in per_img if r >= args.tol]
    rdi = dict((i, r) for r, i in per_img)
    log(f"    {len(bad)}/{n} images differ by >= {args.tol:g} (per-image rel diff)")
    imgs = read_f32(images)

    def subset(idx, name):
        sub = array.array("f")
        for i in idx:
            sub.extend(imgs[i * per:(i + 1) * per])
        path = os.path.join(work, name)
        write_f32(path, sub)
        return path

    margins = json.loads(torch_run(py, args.threads, "margins", args.spec, weights,
                                   subset(bad, f"bad-{slug}.f32")))
    margin = dict(zip(bad, margins))
    near = [i for i in bad if margin[i] < NEAR_TIE]
    sel = bad[:worst]
    ref = os.path.join(work, f"bad-ref-{slug}.f32")
    refbin = tools.path("moec-reference") if "moec-reference" in tools.built else None
    r, why = None, "not found"
    if refbin:
        p = subprocess.run([refbin, args.spec, weights, subset(sel, f"worst-{slug}.f32"), ref],
                           capture_output=True, text=True)
        r = read_f32(ref) if p.returncode == 0 else None
        why = p.stderr.strip()
    for j, i in enumerate(sel):
        line = (f"    image #{i}: moec vs torch {rdi[i]:.2e}, smallest routing margin "
                f"{margin[i]:.2e}")
        if r is not None:
            ri = r[j * K:(j + 1) * K]
            line += (f"; vs fp64 moec-reference: moec {rel_diff(a[i * K:(i + 1) * K], ri):.2e}, "
                     f"torch {rel_diff(b[i * K:(i + 1) * K], ri):.2e}")
        log(line)
    if r is None:
        log(f"    (no fp64 comparison: moec-reference {why})")
    if not near:
        return False, ""
    keep = [i for i in range(n) if margin.get(i, math.inf) >= NEAR_TIE]
    rest = rel_diff([a[i * K + c] for i in keep for c in range(K)],
                    [b[i * K + c] for i in keep for c in range(K)])
    ok = rest < args.tol
    note = (f"{len(near)} image(s) with a routing near tie (margin < {NEAR_TIE:g}) "
            f"left out: #{', #'.join(map(str, near[:10]))}{' ...' if len(near) > 10 else ''}; "
            f"rel diff over the other {len(keep)}: {rest:.3e}")
    log(f"    {note} -> {'ok' if ok else 'FAIL'}")
    return ok, note


# ---------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------


def moec_rate(tools, args, model, weights, images_path, n, fm_dir):
    """images/s of moec, and how it was measured."""
    if fm_dir:
        out, _, _ = tools.run("moec-run", "infer", model, "--weights", weights,
                              "--batch", args.batch, "--threads", args.threads,
                              "--limit", n, "--data", fm_dir)
        m = re.search(r"throughput:\s*([0-9.eE+-]+)\s*images/s\s*\(threads (\d+), batch (\d+)\)",
                      out)
        if not m:
            die(f"no throughput line in moec-run infer output:\n{out}")
        return float(m.group(1)), int(m.group(2))
    # Wall time of `run` on n images minus on one batch: the difference is
    # the inference of n - B images (loading cancels out).
    small = images_path + ".batch"
    if not os.path.exists(small):
        with open(images_path, "rb") as f, open(small, "wb") as g:
            g.write(f.read(args.batch * 4 * args.per))
    outp = images_path + ".out"
    _, _, w_n = tools.run("moec-run", "run", model, "--weights", weights, "--input",
                          images_path, "--output", outp, "--threads", args.threads)
    _, _, w_b = tools.run("moec-run", "run", model, "--weights", weights, "--input",
                          small, "--output", outp, "--threads", args.threads)
    return (n - args.batch) / max(w_n - w_b, 1e-9), None


def cpu_info():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return info
    for ln in out.splitlines():
        if ":" in ln:
            k, v = ln.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description="moec vs PyTorch CPU inference: correctness and speed.")
    ap.add_argument("--bin", required=True, help="directory with moec, moec-run "
                    "(and moec-reference for diagnostics)")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=2560)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="Fashion-MNIST directory (default: the spec's "
                    f"data.path, else {FMNIST_DEFAULT})")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating timing rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="PyTorch warm-up batches per child (default 2)")
    ap.add_argument("--torch-configs", choices=["all", "plain"], default="all",
                    help="'all': time PyTorch in several thread configurations "
                    "and compare with the best; 'plain': only torch.set_num_threads(T)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--check-images", type=int, default=None,
                    help="images for the large-random-weights check (default: all)")
    ap.add_argument("--no-speed", action="store_true", help="correctness only")
    ap.add_argument("--work", help="work directory (default: a temporary one, removed)")
    ap.add_argument("--python", help="a Python that can import torch")
    ap.add_argument("--wait", type=float, default=600,
                    help="seconds to wait for a missing binary (default 600)")
    args = ap.parse_args()
    if args.threads < 1 or args.batch < 1 or args.images < 1:
        die("--threads, --batch and --images must be positive")

    args.spec = os.path.abspath(args.spec)
    spec = moe_torch.parse_spec(args.spec)
    args.per = spec["C"] * spec["H"] * spec["W"]
    tools = Tools(args.bin, args.wait)
    py = find_torch_python(args.python)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="moec-bench-")
    os.makedirs(work, exist_ok=True)
    load0 = loadavg()
    try:
        ok = run(args, spec, tools, py, work, load0)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


def run(args, spec, tools, py, work, load0):
    m = spec["moe"]
    log(f"spec: {args.spec} ({spec['name']}): {spec['C']}x{spec['H']}x{spec['W']}, "
        f"patch {spec['P']}, width {spec['D']}, depth {spec['L']}, heads {spec['heads']}, "
        f"{spec['S']} tokens" + (f"; MoE {m['router']}, E={m['E']}, k={m['k']}, "
                                 f"blocks {sorted(m['blocks'])}" if m else "; dense"))
    tools.snapshot(os.path.join(work, "bin"))
    log(f"binaries: {tools.bin} (" + ", ".join(f"{k} built {v}" for k, v in tools.built.items())
        + "), copied into the work directory")
    model = os.path.join(work, "model.moec")
    weights = os.path.join(work, "w.safetensors")
    t0 = time.perf_counter()
    tools.run("moec", "compile", args.spec, "--batch", args.batch, "-o", model)
    log(f"compiled: batch {args.batch} ({time.perf_counter() - t0:.1f} s)")
    tools.run("moec-run", "init", model, "-o", weights, "--seed", args.seed)

    fm = fmnist_dir(args, spec)
    images = os.path.join(work, "images.f32")
    if fm:
        data, n = fmnist_images(fm, args.images)
        source = f"Fashion-MNIST test set, first {n} images ({fm})"
    else:
        n = args.images
        data = noise_images(n, args.per, args.seed)
        source = f"{n} random N(0,1) images (seed {args.seed})"
    write_f32(images, data)
    log(f"images: {source}")

    # -- correctness ----------------------------------------------------------
    log("correctness (moec-run run vs PyTorch float32, ||moec-torch||/||torch||):")
    rd_init, ok1, note1 = check(tools, py, args, spec, model, weights, images, n, work,
                         "init weights")
    big = os.path.join(work, "w-large.safetensors")
    torch_run(py, args.threads, "randomize", weights, big, "--seed", args.seed + 1)
    nc = min(n, args.check_images or n)
    imgs_c = images
    if nc < n:
        imgs_c = os.path.join(work, "images-check.f32")
        write_f32(imgs_c, data[:nc * args.per])
    rd_big, ok2, note2 = check(tools, py, args, spec, model, big, imgs_c, nc, work,
                        "large weights")
    ok = ok1 and ok2

    if args.no_speed:
        log("speed: skipped (--no-speed)")
        log(f"correctness: {'ok' if ok else 'FAIL'} (rel diff {rd_init:.2e} init weights, "
            f"{rd_big:.2e} large weights; tol {args.tol:g})")
        for tag, note in (("init weights", note1), ("large weights", note2)):
            if note:
                log(f"  {tag}: {note}")
        return ok

    # -- speed ----------------------------------------------------------------
    T = args.threads
    # (OpenMP threads, OpenBLAS threads, OMP_WAIT_POLICY=PASSIVE, batch split).
    # The first is plain torch.set_num_threads(T). Debian's torch runs its
    # own ops on libgomp threads and its matmuls on OpenBLAS's pthreads: the
    # two pools spin-wait against each other on T cores, hence the others.
    configs = [(T, T, False, 1)]
    if args.torch_configs == "all":
        configs += [(T, T, True, 1), (T, 1, True, 1), (1, T, False, 1), (1, 1, False, T)]
    uniq = []
    for o, b, p, sp in configs:
        c = (o, b, p and o > 1, sp)
        if c not in uniq and not (sp > 1 and args.batch < sp):
            uniq.append(c)
    servers = [TorchServer(py, args.spec, weights, images, args.batch, args.warmup, *c)
               for c in uniq]
    moec_rates, moec_threads = [], None
    how = ("`moec-run infer` throughput line (timed inference loop)" if fm else
           "`moec-run run` wall time, N images minus one batch (approximate)")
    log(f"speed: {n} images, batch {args.batch}, threads {T}, {args.rounds} rounds "
        f"alternating moec and PyTorch")
    try:
        for r in range(args.rounds):
            rate, moec_threads = moec_rate(tools, args, model, weights, images, n, fm)
            moec_rates.append(rate)
            parts = [f"moec {rate:.0f}"]
            for s in servers:
                time.sleep(0.5)  # let idle threads of the previous run go to sleep
                parts.append(f"torch[{s.name}] {s.time():.0f}")
            time.sleep(0.5)
            log(f"  round {r + 1}: " + ", ".join(parts) + " images/s")
    finally:
        for s in servers:
            s.close()
    load1 = loadavg()

    # -- report ---------------------------------------------------------------
    med = statistics.median
    best_srv = max(servers, key=lambda s: med(s.rates))
    plain = servers[0]
    info = best_srv.info
    cpu = cpu_info()
    log("")
    log("=" * 72)
    log(f"moec vs PyTorch, CPU inference: {spec['name']}")
    log("=" * 72)
    log(f"machine    : {cpu.get('Model name', '?')} (family {cpu.get('CPU family', '?')}, "
        f"model {cpu.get('Model', '?')}), {cpu.get('CPU(s)', '?')} CPUs, "
        f"avx512f {'yes' if 'avx512f' in cpu.get('Flags', '').split() else 'no'}; "
        f"load average {load0} at start, {load1} at end")
    log(f"torch      : {info.get('torch', '?')}; "
        + "; ".join(c.lstrip("- ") for c in info.get("config", [])))
    log(f"BLAS       : {', '.join(info.get('blas_libraries', [])) or '?'}; "
        f"OpenBLAS core {info.get('openblas_get_corename', '?')}; "
        f"OPENBLAS_CORETYPE={info.get('OPENBLAS_CORETYPE')} in the torch child")
    log(f"binaries   : {tools.bin}, moec built {tools.built.get('moec', '?')}, "
        f"moec-run built {tools.built.get('moec-run', '?')}")
    log(f"setting    : batch {args.batch}, threads {T}"
        + (f" (moec-run reports threads {moec_threads})" if moec_threads else "")
        + f", {n} images ({'Fashion-MNIST' if fm else 'random'}), weights: moec init seed {args.seed}")
    log(f"moec       : {how}")
    log(f"PyTorch    : moe_torch.py, float32, inference_mode, {args.warmup} warm-up "
        f"batches, one timed pass over the {n} images per round")
    log("")
    log(f"{'images/s':<52}{'median':>10}{'best':>10}")
    log(f"{'moec':<52}{med(moec_rates):>10.1f}{max(moec_rates):>10.1f}")
    for s in servers:
        mark = " <- best" if s is best_srv and len(servers) > 1 else ""
        log(f"{'PyTorch ' + s.name:<52}{med(s.rates):>10.1f}{max(s.rates):>10.1f}{mark}")
    log("")
    ratio = med(moec_rates) / med(best_srv.rates)
    log(f"ratio moec / PyTorch (medians, best PyTorch config): {ratio:.2f}x")
    if best_srv is not plain:
        log(f"ratio moec / PyTorch (medians, plain torch.set_num_threads({T})): "
            f"{med(moec_rates) / med(plain.rates):.2f}x")
    log(f"logits rel diff: {rd_init:.2e} (init weights, {n} images), "
        f"{rd_big:.2e} (large random weights, {nc} images); tol {args.tol:g}"
        f" -> {'ok' if ok else 'FAIL'}")
    for tag, note in (("init weights", note1), ("large weights", note2)):
        if note:
            log(f"  {tag}: {note}")
    return ok


if __name__ == "__main__":
    main()
