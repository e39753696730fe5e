"""Checks the hot loops of the kernels' assembly (moec compile --dump-asm).

A hot loop is an innermost loop with vector FMAs (or vdpbf16ps, the bf16
pair dot products of --precision=bf16, counted as FMAs). A register-tile loop is a
hot loop where FMAs are at least half of the vector instructions (a
contraction's reduction step: broadcasts, one row of B, FMAs). Checked:
  - no hot loop builds vectors element by element or from pieces
    (vinsertps, vpinsrd, vinsertf128, vinsertf32x4, vinsertf64x4, ...),
  - no register-tile loop spills or reloads a vector register (the tile
    fits the register file),
  - over all hot loops, at least --min-full-width of the FMAs use the
    widest registers (--width ymm or zmm); the rest are peeled remainders.
Spills in other hot loops (the polynomials of exp and erf, where LLVM
interleaves several unrolled vectors) are reported as notes.

usage: hot_loops.py ASM --width zmm|ymm [--plan PLAN.mlir --ops OP,OP]
                    [--min-full-width F] [--min-loops N] [--min-dots F]
--min-dots: at least this share of the hot loops' FMAs are bf16 dots.
With --plan (moec compile --emit=plan) and --ops only the kernels of those
ops are checked. Prints one line per offending loop and a summary; exits 1
on a violation.
"""
import argparse
import re
import sys

FMA = re.compile(r"^\s+(?:v(?:f|fn)m(?:add|sub)[0-9]{3}[ps]s|vdpbf16ps)\s+(.*)$")
BAD = re.compile(r"^\s+(vinsertps|vpinsrd|vpinsrq|vinsertf128|vinsertf32x4|"
                 r"vinsertf64x4|vinserti128|vinserti32x4|vinserti64x4)\b")
# Vector spills and reloads (a general-purpose register's reload of a loop
# bound or pointer is cheap and allowed).
SPILL = re.compile(r"%[xyz]mm\d+.*Spill$")
RELOAD = re.compile(r"%[xyz]mm\d+.*Reload$")
VECTOR = re.compile(r"^\s+v[a-z0-9]+\s.*%[xyz]mm")
CALL = re.compile(r'call @(\w+)\(.*moe\.op = "([\w.]+)"')
FUNC = re.compile(r"^([A-Za-z_][\w.$]*):")
# A labelled block, or one reached only by fallthrough (llc writes it as a
# comment); the rest of the line or the comment lines after it say which
# loop it belongs to.
BLOCK = re.compile(r"^(?:\.LBB(\d+_\d+):|# %bb\.\d+:)")
HEADER = re.compile(r"=>\s*This Inner Loop Header")
IN_LOOP = re.compile(r"in Loop: Header=BB(\d+_\d+)")


def loops(path):
    """Yields (function, header, [instruction lines]) for innermost loops."""
    func = owner = block = None
    headers = set()
    body = {}
    order = []
    in_comments = False

    def classify(text):
        nonlocal owner
        if HEADER.search(text):
            owner = block
            headers.add((func, block))
        elif owner is None:
            m = IN_LOOP.search(text)
            if m:
                owner = m.group(1)

    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        m = FUNC.match(line)
        if m:
            func, owner, block, in_comments = m.group(1), None, None, False
            continue
        m = BLOCK.match(line)
        if m:
            block, owner, in_comments = m.group(1), None, True
            classify(line)
            continue
        stripped = line.strip()
        if in_comments and stripped.startswith("#"):
            classify(stripped)
            continue
        in_comments = False
        if owner is None or not stripped or stripped.startswith((".", "#")):
            continue
        key = (func, owner)
        if key not in body:
            body[key] = []
            order.append(key)
        body[key].append(line)
    for key in order:
        if key in headers:
            yield key[0], key[1], body[key]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("asm")
    ap.add_argument("--width", choices=["ymm", "zmm"], required=True)
    ap.add_argument("--min-full-width", type=float, default=0.9)
    ap.add_argument("--min-loops", type=int, default=1)
    ap.add_argument("--min-dots", type=float, default=0.0)
    ap.add_argument("--plan")
    ap.add_argument("--ops")
    args = ap.parse_args()
    kernels = None
    if args.plan:
        wanted = set(args.ops.split(","))
        kernels = {}
        for line in open(args.plan, encoding="utf-8"):
            m = CALL.search(line)
            if m and m.group(2) in wanted:
                kernels[m.group(1)] = m.group(2)
        missing = wanted - set(kernels.values())
        if missing:
            print(f"error: no kernel of {sorted(missing)} in the plan")
            return 1
    hot = bad = full = fmas = dots = 0
    for func, header, lines in loops(args.asm):
        # A kernel's body is the internal `<kernel>_impl` that its exported
        # wrapper calls; LLVM inlines it into the wrapper unless it is large.
        if func.endswith("_impl"):
            func = func[:-len("_impl")]
        if kernels is not None and func not in kernels:
            continue
        loop_fmas = [l for l in lines if FMA.match(l)]
        if not loop_fmas:
            continue
        hot += 1
        fmas += len(loop_fmas)
        dots += sum(1 for l in loop_fmas if "vdpbf16ps" in l)
        full += sum(1 for l in loop_fmas if f"%{args.width}" in l)
        spills = sum(1 for l in lines if SPILL.search(l))
        reloads = sum(1 for l in lines if RELOAD.search(l))
        inserts = sum(1 for l in lines if BAD.match(l))
        vector = sum(1 for l in lines if VECTOR.match(l))
        tile = 2 * len(loop_fmas) >= vector
        op = f" ({kernels[func]})" if kernels else ""
        what = (f"{func}{op} loop BB{header}: {len(loop_fmas)} FMAs of "
                f"{vector} vector instructions, {spills} spills, "
                f"{reloads} reloads, {inserts} inserts")
        if inserts or (tile and (spills or reloads)):
            bad += 1
            print("violation: " + what)
        elif spills or reloads:
            print("note: " + what)
    share = full / fmas if fmas else 0.0
    dot_share = dots / fmas if fmas else 0.0
    print(f"hot loops: {hot}, violating: {bad}; "
          f"FMAs on {args.width}: {full} of {fmas} ({share:.0%}); "
          f"bf16 dots: {dots} ({dot_share:.0%})")
    if hot < args.min_loops:
        print(f"error: expected at least {args.min_loops} hot loops")
        return 1
    if bad:
        return 1
    if dot_share < args.min_dots:
        print(f"error: under {args.min_dots:.0%} of the FMAs are bf16 dots")
        return 1
    if share < args.min_full_width:
        print(f"error: under {args.min_full_width:.0%} of the FMAs are "
              f"{args.width}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
