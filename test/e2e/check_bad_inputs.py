#!/usr/bin/env python3
"""moec-run on broken inputs built from a real compiled model: each must fail
with a clear message naming the file and the problem, the documented exit
code, and no crash; no input file may be modified.

usage: check_bad_inputs.py BIN_DIR SPEC WORK_DIR
"""
import json
import os
import shutil
import struct
import subprocess
import sys

FAILURES = []


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def expect(name, cmd, code, *needles):
    proc = run(cmd)
    out = proc.stderr + proc.stdout
    if proc.returncode != code:
        FAILURES.append(f"{name}: exit {proc.returncode}, want {code}\n{out}")
    elif proc.returncode < 0:
        FAILURES.append(f"{name}: crashed with signal {-proc.returncode}")
    for needle in needles:
        if needle not in out:
            FAILURES.append(f"{name}: output lacks {needle!r}:\n{out}")
    print(f"{name}: exit {proc.returncode}: {out.strip().splitlines()[0] if out.strip() else ''}")


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def sections(data):
    """The artifact's sections as {name: bytes}, in file order."""
    count, table = struct.unpack_from("<QQ", data, 24)
    out = {}
    for i in range(count):
        name, off, size = struct.unpack_from("<16sQQ", data, table + 48 * i)
        out[name.rstrip(b"\0").decode()] = data[off:off + size]
    return out


def rebuild(data, replaced):
    """The artifact with some sections replaced, laid out and checksummed as
    a valid file (docs/artifact.md), as an attacker who recomputes the
    checksum would write it."""
    parts = sections(data)
    parts.update(replaced)
    out = bytearray(data[:64])
    entries = []
    for name, payload in parts.items():
        out += b"\0" * (-len(out) % 64)
        entries.append(struct.pack("<16sQQ16x", name.encode(), len(out),
                                   len(payload)))
        out += payload
    out += b"\0" * (-len(out) % 64)
    table = len(out)
    for entry in entries:
        out += entry
    struct.pack_into("<QQQ", out, 16, len(out), len(entries), table)
    struct.pack_into("<Q", out, 40, fnv1a64(bytes(out[64:])))
    return bytes(out)


def main():
    bindir, spec, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    moec = os.path.join(bindir, "moec")
    run_ = os.path.join(bindir, "moec-run")
    model = os.path.join(work, "model.moec")
    weights = os.path.join(work, "w.safetensors")
    # Inference only (every check below runs infer, run or inspect): the
    # training entry points would triple the compile time.
    proc = run([moec, "compile", spec, "--batch", "4", "--entries=infer",
                "-o", model])
    if proc.returncode != 0:
        sys.exit(f"FAIL: compile: {proc.stderr}")
    proc = run([run_, "init", model, "-o", weights])
    if proc.returncode != 0:
        sys.exit(f"FAIL: init: {proc.stderr}")
    data = open(model, "rb").read()

    def variant(name, payload):
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(payload)
        return path

    # Artifacts.
    truncated = variant("truncated.moec", data[: len(data) // 2])
    expect("truncated artifact", [run_, "inspect", truncated], 2,
           "truncated.moec", "truncated")
    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0x40
    corrupted = variant("corrupted.moec", bytes(flipped))
    expect("corrupted artifact", [run_, "inspect", corrupted], 2,
           "corrupted.moec", "checksum mismatch")
    # moec writes artifact version 1.2 (docs/artifact.md).
    major, minor = struct.unpack_from("<II", data, 8)
    if (major, minor) != (1, 2):
        FAILURES.append(f"compiled artifact has version {major}.{minor}, want 1.2")
    newer = bytearray(data)
    struct.pack_into("<I", newer, 8, 2)
    expect("wrong version", [run_, "inspect", variant("v2.moec", bytes(newer))], 2,
           "v2.moec", "artifact version 2.2 is not supported (this runtime reads 1.x)")
    # Any other minor version of major 1 is read (it only adds fields).
    later = bytearray(data)
    struct.pack_into("<I", later, 12, 7)
    expect("later minor version", [run_, "inspect", variant("v1.7.moec", bytes(later))],
           0, "version:      1.7")
    # A tampered plan or kernels section with the checksum recomputed: the
    # loader checks the whole plan and the kernels' ELF headers.
    plan = json.loads(sections(data)["plan"])

    def tampered(name, mutate):
        p = json.loads(json.dumps(plan))
        mutate(p["entries"]["infer"])
        return variant(name, rebuild(data, {"plan": json.dumps(p).encode()}))

    expect("tampered: no arguments",
           [run_, "inspect", tampered("noargs.moec",
                                      lambda d: d[0].update(args=[]))],
           2, "noargs.moec", "/entries/infer/0/args: expected 1 to 1024 "
           "arguments, got 0")
    expect("tampered: 2^62 tiles",
           [run_, "inspect",
            tampered("tiles.moec",
                     lambda d: d[0].update(parallel="fixed", tiles=2**62))],
           2, "tiles.moec", "4611686018427387904 tiles, more than the limit")
    param_bytes = json.loads(sections(data)["manifest"])["param_bytes"]

    def past_the_end(d):
        d[0]["args"][1] = {"space": "param", "offset": param_bytes - 4,
                           "bytes": 64}

    expect("tampered: argument past the end",
           [run_, "inspect", tampered("extent.moec", past_the_end)],
           2, "extent.moec", "/entries/infer/0/args/1")
    cut = variant("cut-kernels.moec",
                  rebuild(data, {"kernels": sections(data)["kernels"][:4096]}))
    expect("tampered: kernels cut to 4 KB", [run_, "infer", cut, "--weights",
                                             weights, "--limit", "4"],
           2, "cut-kernels.moec", "the kernels section (4096 bytes) is "
           "truncated")
    expect("untampered rebuild", [run_, "inspect",
                                  variant("same.moec", rebuild(data, {}))], 0)

    expect("not an artifact", [run_, "inspect", spec], 2, os.path.basename(spec))
    expect("missing artifact", [run_, "inspect", os.path.join(work, "none.moec")],
           2, "none.moec")

    # Weights: drop one tensor / change one shape in the safetensors header.
    raw = open(weights, "rb").read()
    n = struct.unpack_from("<Q", raw, 0)[0]
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]

    def rewrite(name, mutate, data=body):
        h = json.loads(json.dumps(header))
        mutate(h)
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        return variant(name, struct.pack("<Q", len(text)) + text + data)

    def drop(h, tensor):
        # Remove the tensor and its bytes, so the rest still tiles the data.
        begin, end = h.pop(tensor)["data_offsets"]
        for key, value in h.items():
            if key != "__metadata__" and value["data_offsets"][0] >= end:
                value["data_offsets"] = [o - (end - begin)
                                         for o in value["data_offsets"]]

    begin, end = header["head.bias"]["data_offsets"]
    missing = rewrite("missing.safetensors", lambda h: drop(h, "head.bias"),
                      body[:begin] + body[end:])
    expect("missing tensor", [run_, "run", model, "--weights", missing,
                              "--input", os.path.join(work, "x.f32"),
                              "--output", os.path.join(work, "y.f32")],
           2, "missing.safetensors", "head.bias")

    def reshape(h):
        h["head.weight"]["shape"] = list(reversed(h["head.weight"]["shape"]))

    misshaped = rewrite("misshaped.safetensors", reshape)
    expect("mis-shaped tensor", [run_, "infer", model, "--weights", misshaped,
                                 "--limit", "4"],
           2, "misshaped.safetensors", "head.weight", "shape")
    expect("truncated weights", [run_, "infer", model, "--weights",
                                 variant("short.safetensors", raw[:-100]),
                                 "--limit", "4"], 2, "short.safetensors")
    expect("trailing bytes", [run_, "infer", model, "--weights",
                              variant("long.safetensors", raw + b"\0" * 8),
                              "--limit", "4"],
           2, "long.safetensors", "8 bytes after the last tensor's data")
    text = raw[8:8 + n].decode().rstrip()
    first = next(k for k in header if k != "__metadata__")
    dup = (text[:-1] + ", " + json.dumps(first) + ": " +
           json.dumps(header[first]) + "}").encode()
    dup += b" " * (-len(dup) % 8)
    expect("duplicate tensor", [run_, "infer", model, "--weights",
                                variant("dup.safetensors",
                                        struct.pack("<Q", len(dup)) + dup + body),
                                "--limit", "4"],
           2, "dup.safetensors", f"the header names '{first}' twice")

    # Data.
    empty_dir = os.path.join(work, "no-data")
    os.makedirs(empty_dir, exist_ok=True)
    expect("unreadable dataset", [run_, "infer", model, "--weights", weights,
                                  "--data", empty_dir, "--limit", "4"],
           2, "no-data")
    bad_idx = os.path.join(work, "bad-idx")
    shutil.rmtree(bad_idx, ignore_errors=True)
    os.makedirs(bad_idx)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with open(os.path.join(bad_idx, name), "wb") as f:
            f.write(struct.pack(">IIII", 1234, 10, 28, 28))
    expect("corrupt dataset", [run_, "infer", model, "--weights", weights,
                               "--data", bad_idx, "--limit", "4"],
           2, "t10k-images-idx3-ubyte", "magic")
    with open(os.path.join(work, "odd.f32"), "wb") as f:
        f.write(b"\0" * 10)
    expect("ragged raw input", [run_, "run", model, "--weights", weights,
                                "--input", os.path.join(work, "odd.f32"),
                                "--output", os.path.join(work, "y.f32")], 2,
           "odd.f32")

    # Flags.
    expect("unknown flag", [run_, "infer", model, "--frobnicate", "1"], 2,
           "--frobnicate")
    expect("bad number", [run_, "infer", model, "--threads", "two"], 2,
           "--threads")

    if open(model, "rb").read() != data:
        FAILURES.append("the artifact was modified")
    for failure in FAILURES:
        print("FAIL:", failure)
    print(f"{len(FAILURES)} failures")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
