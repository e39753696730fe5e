#!/usr/bin/env python3
"""Kills training with SIGKILL at random moments and resumes it: the final
weights must be bitwise those of an uninterrupted run.

A tiny MoE model (token-choice top-2 with router noise, so the noise
generator's state matters too) trains on a small PNG folder for many short
epochs; a checkpoint is written after every epoch. One uninterrupted run
(checkpointing too) gives the reference weights and its wall time T. Then the
same run is started, killed (SIGKILL) after a random delay in [0, 1.5 T / KILLS]
and resumed from its checkpoint directory (or started afresh if it died before
the first checkpoint), KILLS times, so the kills are spread over the whole run
(some land during start-up, some while a checkpoint is written); then it is
resumed once more and left to finish. The delays scale with T, so a slow or
busy machine takes the same number of runs. The seed of the delays is printed,
so a failure can be replayed with --seed.

usage: check_kill_resume.py BIN_DIR WORK_DIR [--kills N] [--seed S]
"""
import argparse
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

SPEC = """{"name": "kill-resume",
 "model": {"input": {"channels": 1, "height": 8, "width": 8}, "patch_size": 4,
           "width": 8, "depth": 1, "heads": 2, "mlp_ratio": 2, "classes": 2,
           "pooling": "mean"},
 "moe": {"placement": {"rule": "every-n", "n": 1}, "experts": 3, "top_k": 2,
         "router": {"kind": "token-choice", "noise_std": 1.0},
         "aux_loss": {"importance": 0.01, "load": 0.01}},
 "train": {"batch": 4, "epochs": 600, "label_smoothing": 0.0, "seed": 7},
 "data": {"dataset": "image-folder", "path": "images"}}
"""


def png(path, pixels, size):
    """An 8-bit grayscale PNG of size x size `pixels` (row-major bytes)."""
    raw = b"".join(b"\0" + bytes(pixels[r * size:(r + 1) * size])
                   for r in range(size))

    def chunk(kind, data):
        body = kind + data
        return (struct.pack(">I", len(data)) + body +
                struct.pack(">I", zlib.crc32(body) & 0xffffffff))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def make_images(root, rng):
    for split, count in (("train", 12), ("test", 4)):
        for label in ("a", "b"):
            folder = os.path.join(root, split, label)
            os.makedirs(folder)
            for i in range(count):
                base = 60 if label == "a" else 180
                pixels = [min(255, max(0, base + rng.randint(-60, 60)))
                          for _ in range(64)]
                png(os.path.join(folder, f"{i}.png"), pixels, 8)


def run(cmd):
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout}")
    return done.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("work")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"kill-resume: seed {seed}", flush=True)
    rng = random.Random(seed)

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    work = args.work
    make_images(os.path.join(work, "images"), random.Random(1))
    spec = os.path.join(work, "spec.json")
    with open(spec, "w") as f:
        f.write(SPEC)
    model = os.path.join(work, "model.moec")
    run([os.path.join(args.bin, "moec"), "compile", spec, "--quiet", "-o", model])
    moec_run = os.path.join(args.bin, "moec-run")
    data = os.path.join(work, "images")

    def train(extra, out):
        return [moec_run, "train", model, "--data", data, "--threads", "2",
                "--eval-every-epoch", "off", "-o", out] + extra

    reference = os.path.join(work, "reference.safetensors")
    start = time.monotonic()
    run(train(["--checkpoint-dir", os.path.join(work, "reference-ckpt")],
              reference))
    total = time.monotonic() - start
    print(f"kill-resume: uninterrupted run {total:.2f} s", flush=True)

    ckpt = os.path.join(work, "ckpt")
    final = os.path.join(work, "final.safetensors")
    kills = 0
    finished = False
    while kills < args.kills:
        resume = os.path.exists(os.path.join(ckpt, "latest"))
        cmd = train(["--resume", ckpt] if resume else ["--checkpoint-dir", ckpt],
                    final)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 1.5 * total / args.kills))
        if proc.poll() is not None:
            if proc.returncode != 0:
                sys.exit(f"kill-resume: a run exited {proc.returncode}: {' '.join(cmd)}")
            finished = True  # the machine got faster than the reference run
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    if not finished:
        run(train(["--resume", ckpt] if os.path.exists(os.path.join(ckpt, "latest"))
                  else ["--checkpoint-dir", ckpt], final))
    if kills == 0:
        sys.exit("kill-resume: no run was killed")
    with open(reference, "rb") as a, open(final, "rb") as b:
        if a.read() != b.read():
            sys.exit(f"kill-resume: after {kills} kills the final weights differ "
                     f"from the uninterrupted run (seed {seed})")
    print(f"kill-resume: {kills} kills, final weights bitwise identical")


if __name__ == "__main__":
    main()
