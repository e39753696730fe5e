#!/usr/bin/env python3
"""Runs `moec compile` on every bad spec listed in EXPECTED.txt and checks that
each fails with exit code 2, prints exactly the expected error on stderr,
creates no output file, and leaves an existing output file untouched.

usage: check_bad_specs.py MOEC BAD_SPECS_DIR WORK_DIR
"""
import os
import subprocess
import sys


def main():
    moec, spec_dir, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    failures = []
    cases = 0
    with open(os.path.join(spec_dir, "EXPECTED.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            name, expected = line.split("\t", 1)
            cases += 1
            fresh = os.path.join(work, name + ".fresh.mlir")
            kept = os.path.join(work, name + ".kept.mlir")
            if os.path.exists(fresh):
                os.remove(fresh)
            with open(kept, "w", encoding="utf-8") as k:
                k.write("previous contents\n")
            for out, must_exist in ((fresh, False), (kept, True)):
                proc = subprocess.run([moec, "compile", name, "-o", out],
                                      cwd=spec_dir, capture_output=True,
                                      text=True)
                want = "moec: error: " + expected + "\n"
                if proc.returncode != 2:
                    failures.append(f"{name}: exit code {proc.returncode}, want 2")
                if proc.stderr != want:
                    failures.append(f"{name}: stderr\n  got:  {proc.stderr!r}\n  want: {want!r}")
                if proc.stdout:
                    failures.append(f"{name}: unexpected stdout {proc.stdout!r}")
                if os.path.exists(out) != must_exist:
                    failures.append(f"{name}: output file {'removed' if must_exist else 'created'}")
            with open(kept, encoding="utf-8") as k:
                if k.read() != "previous contents\n":
                    failures.append(f"{name}: existing output file was modified")
    for failure in failures:
        print("FAIL:", failure)
    print(f"{cases} bad specs checked, {len(failures)} failures")
    return 1 if failures or cases < 15 else 0


if __name__ == "__main__":
    sys.exit(main())
