"""Run every benchmark in turn, each in its own process, and repeat their RESULT lines at the end."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    "topology",
    "push",
    "replicas",
    "p2p",
    "p2p_gate",
    "backend",
    "lab",
    "election",
    "rotation",
    "abandoned_polls",
    "controller_api",
    "slow_clients",
    "ui_watch",
]


def main(argv: list[str]) -> int:
    """`python -m bench [NAME ...] [OPTIONS]`: the options go to every named benchmark."""
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split] or BENCHES, argv[split:]
    results: list[str] = []
    failed: list[str] = []
    for name in names:
        print(f"\n== bench.{name} ==", flush=True)
        lines: list[str] = []
        # Streamed as it comes: a person watches progress, not a minute of silence.
        with subprocess.Popen(
            [sys.executable, "-m", f"bench.{name}", *options], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith("RESULT "):
                    lines.append(line.rstrip("\n"))
        if proc.returncode != 0 or not lines:
            failed.append(name)
        results.extend(lines[-1:])
    print("\n== summary ==")
    print("\n".join(results))
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
