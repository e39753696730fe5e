#!/usr/bin/env python3
"""expect-exit.py CODE CMD...: runs CMD (its output passes through) and
succeeds only if it exits with CODE."""
import subprocess
import sys

code = int(sys.argv[1])
got = subprocess.run(sys.argv[2:]).returncode
if got != code:
    print(f"expect-exit.py: expected exit code {code}, got {got}", file=sys.stderr)
    sys.exit(1)
