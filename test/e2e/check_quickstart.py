#!/usr/bin/env python3
"""Runs README.md's quickstart verbatim.

The first ```sh block after the "## Quickstart" heading is run line by line
with bash in a scratch folder that looks like the repository's root:
`examples/` and `build/bin/` link to the source tree's examples and the
build's tools. Every line must exit 0, and the files the text promises must
be there: the artifact, the trained weights, one prediction per image, the
exported weights.

usage: check_quickstart.py README.md SOURCE_DIR BIN_DIR WORK_DIR
"""
import csv
import os
import re
import shutil
import subprocess
import sys


def quickstart_commands(readme):
    text = open(readme, encoding="utf-8").read()
    section = text.split("## Quickstart", 1)
    if len(section) != 2:
        sys.exit(f"{readme}: no '## Quickstart' section")
    block = re.search(r"```sh\n(.*?)```", section[1], re.S)
    if not block:
        sys.exit(f"{readme}: the Quickstart section has no ```sh block")
    return [line for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def main():
    readme, source, bin_dir, work = sys.argv[1:5]
    commands = quickstart_commands(readme)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "build"))
    os.symlink(os.path.join(source, "examples"), os.path.join(work, "examples"))
    os.symlink(os.path.abspath(bin_dir), os.path.join(work, "build", "bin"))
    for command in commands:
        print(f"$ {command}", flush=True)
        done = subprocess.run(["bash", "-c", command], cwd=work)
        if done.returncode != 0:
            sys.exit(f"quickstart command failed (exit {done.returncode}): {command}")

    def need(path):
        full = os.path.join(work, path)
        if not os.path.isfile(full) or os.path.getsize(full) == 0:
            sys.exit(f"the quickstart did not write {path}")
        return full

    need("model.moec")
    need("trained.safetensors")
    need("weights.safetensors")
    with open(need("predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1000:
        sys.exit(f"predictions.csv has {len(rows)} rows, expected 1000")
    if any(not (0 <= int(r["predicted"]) < 10) for r in rows):
        sys.exit("predictions.csv has a class outside 0..9")
    print(f"quickstart: {len(commands)} commands ran, outputs checked")


if __name__ == "__main__":
    main()
