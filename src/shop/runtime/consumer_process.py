"""The order consumers as a process of their own beside the HTTP server, kept running.

On two cores, consumers on the HTTP event loop take its time from intake (and intake theirs):
in their own process they use the other core. The child dies with its parent (PDEATHSIG), and
a child that exits unexpectedly is started again after a pause.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading

import tenacity

from shop.supervision import RESTART_WAIT, failure

log = logging.getLogger(__name__)

PARENT_ENV = "SHOP_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child (the consumers started by `Child`, or a uvicorn worker): exit (SIGTERM) when
    the parent does, even when the parent was killed with SIGKILL."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None or int(parent) == os.getpid() or not sys.platform.startswith("linux"):
        return  # not a child (one uvicorn worker runs in the parent process itself)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Child:
    """`argv` as a supervised child process: started, restarted if it exits, stopped."""

    def __init__(self, name: str, argv: list[str], *, stop_seconds: float) -> None:
        self._name = name
        self._stop_seconds = stop_seconds
        self._argv = argv
        # The environment as it is now: the parent may change its own afterwards.
        self._env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._keep_running, name=name, daemon=True)

    def start(self) -> None:
        self._watcher.start()

    def _keep_running(self) -> None:
        pause = self._pause
        tenacity.Retrying(wait=RESTART_WAIT, sleep=pause, before_sleep=self._exited)(self._run)

    def _run(self) -> None:
        """Run the child until it exits; raise _Exited if nobody asked it to."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._process = subprocess.Popen(self._argv, env=self._env)
        code = self._process.wait()
        if not self._stopping.is_set():
            raise _Exited(code)

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # ends early when the parent stops

    def _exited(self, state: tenacity.RetryCallState) -> None:
        delay = state.upcoming_sleep
        log.error(
            "%s exited with %s; starting it again in %.1fs", self._name, failure(state), delay
        )

    def stop(self) -> None:
        """SIGTERM, then wait for it to finish its batch (SIGKILL after `stop_seconds`)."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self._stop_seconds)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self._name, self._stop_seconds)
            process.kill()
            process.wait()


class _Exited(Exception):
    """The child exited (its exit code is the argument) without being asked to."""
