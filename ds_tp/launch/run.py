"""Run the launcher in the foreground, in the user's process group (a group kill reaches every
rank), forwarding SIGINT/SIGTERM, and report how it ended."""
from __future__ import annotations

import signal
import subprocess


def run_launcher(cmd: list[str], env: dict[str, str], watcher=None) -> int:
    proc = subprocess.Popen(cmd, env=env)
    if watcher is not None:
        watcher.start()

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if watcher is not None:
            watcher.stop()
