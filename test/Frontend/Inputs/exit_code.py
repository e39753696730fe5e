#!/usr/bin/env python3
"""Runs a command, copies its stderr to stdout and prints `exit N` with its
exit code, so that a FileCheck test can check the exact code (lit's `not`
accepts any failure).

usage: exit_code.py COMMAND [ARG]...
"""
import subprocess
import sys

proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE, text=True, errors="replace")
sys.stdout.write(proc.stderr)
print(f"exit {proc.returncode}")
