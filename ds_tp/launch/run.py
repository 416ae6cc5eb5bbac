"""Run the launcher in the foreground, in the user's process group (a group kill reaches every
rank), forwarding SIGINT/SIGTERM, and report how it ended. When the watcher sees a rank fail and the
launcher does not end the job (a remote rank's peers wait in a collective), ds-tp ends it: SIGTERM to
the launcher (DeepSpeed's runner then stops every host), SIGKILL to it 5 s later, and to this host's ranks."""
from __future__ import annotations

import signal
import subprocess
import threading

KILL_AFTER_S = 5.0


SECRET_NAMES = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def secrets_of(env: dict[str, str]) -> list[str]:
    """Values of variables whose names say they are secrets (HF_TOKEN, WANDB_API_KEY, ...): DeepSpeed's runner
    prints its pdsh command with `export NAME=value` for every carried variable."""
    return sorted({v for k, v in env.items() if len(v) >= 6 and any(w in k.upper() for w in SECRET_NAMES)},
                  key=len, reverse=True)


def pump(stream, output, secrets: list[str]) -> threading.Thread:
    """Copy the launcher's output to `output` line by line, each secret value replaced by '***'."""
    def run():
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            for secret in secrets:
                line = line.replace(secret, "***")
            output.write(line)
            output.flush()
        stream.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_launcher(cmd: list[str], env: dict[str, str], watcher=None, say=None, output=None) -> int:
    """output: a file for the launcher's stdout and stderr, secrets redacted (None: this process's)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if output else None,
                            stderr=subprocess.STDOUT if output else None)
    copier = pump(proc.stdout, output, secrets_of(env)) if output else None
    try:
        return _wait(proc, watcher, say)
    finally:
        if copier is not None:
            copier.join(timeout=10)


def _wait(proc, watcher, say) -> int:
    if watcher is not None:
        watcher.start()

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if watcher is not None and watcher.should_end():
                if say:
                    say(f"ds-tp: {watcher.describe()}; the launcher has not ended the job: ending it")
                proc.terminate()
                try:
                    code = proc.wait(timeout=KILL_AFTER_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                watcher.kill_local_ranks()  # a stopped or hung rank ignores the launcher's SIGTERM
                return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if watcher is not None:
            watcher.stop()
