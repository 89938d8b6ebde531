"""Runs rotate_keys with a pause inside each batch, so that tests can interrupt or race it.

Usage: python -m tests.slow_rotate PAUSE_SECONDS [rotate_keys options ...]

The pause comes after the batch's writes and before its commit, while the
batch still holds its row locks. The process prints its peak memory use on
stderr as ``peak_rss_kb=<kilobytes>``.
"""

import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.core.management import execute_from_command_line  # noqa: E402

from django_kms_fields import rotation  # noqa: E402


def main() -> None:
    pause = float(sys.argv[1])
    write = rotation.Rotation._write

    def write_then_pause(self, target, updates):
        write(self, target, updates)
        time.sleep(pause)

    rotation.Rotation._write = write_then_pause
    try:
        execute_from_command_line(["manage.py", "rotate_keys", *sys.argv[2:]])
    finally:
        print(f"peak_rss_kb={peak_rss_kb()}", file=sys.stderr)


def peak_rss_kb() -> int:
    """Peak resident memory since this program started, from Linux's /proc.

    getrusage() would also count the memory of the parent process that this
    one was forked from before exec.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("VmHWM is missing from /proc/self/status")


if __name__ == "__main__":
    main()
