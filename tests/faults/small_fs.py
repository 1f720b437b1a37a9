"""Run a command with one directory on a small tmpfs of its own: a disk that can be filled.

    unshare --mount [--map-root-user] python3 tests/faults/small_fs.py \
        --size 8m --mount DIR --seed SEED --out OUT -- eum switch --data-dir DIR ...

Run inside a private mount namespace (unshare), so the mount is seen by this process and its
children only and disappears with them: nothing is left mounted if the test dies. It mounts a
tmpfs of `--size` on `--mount`, copies `--seed` (a provisioned data dir) into it, runs the
command, forwards SIGTERM and SIGINT to it, and once it has exited copies the directory to
`--out` (the ledger and logs as the command left them), then exits with the command's status.

While it runs, another process of the same user reaches the small disk through
/proc/PID/root/DIR (PID: this process) (tests/test_full_disk.py fills and frees it that way).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", required=True, help="tmpfs size, as mount(8) takes it: 8m")
    parser.add_argument("--mount", required=True, type=Path)
    parser.add_argument("--seed", type=Path, help="a directory copied onto the tmpfs before the command")
    parser.add_argument("--out", required=True, type=Path, help="where the tmpfs is copied after the command")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    args.mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size},mode=0755", "tmpfs", str(args.mount)], check=True)
    if args.seed is not None:
        shutil.copytree(args.seed, args.mount, dirs_exist_ok=True)
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _frame: child.send_signal(s))
    rc = child.wait()
    shutil.copytree(args.mount, args.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock", "filler*"))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
