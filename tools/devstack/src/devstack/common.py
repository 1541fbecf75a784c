"""Process plumbing shared by every server of the local stack: paths, pidfiles, ports, waiting.

Each server is started detached (its own session, so it survives the CLI that started it and
can be stopped as a whole process group) and is identified by a pidfile holding its pid *and*
its kernel start time, so a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
STACK_DIR_ENV = "SHOP_STACK_DIR"
STOP_TIMEOUT = 30.0
TAIL_LINES = 20


class StackError(Exception):
    """The local stack could not be installed, started or stopped; the message says why."""


def _is_shop_checkout(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "src" / "shop").is_dir()


def repo_root() -> Path:
    """The shop checkout: the first parent of this file, else of the working directory, that
    holds pyproject.toml and src/shop (devstack's own pyproject.toml, in tools/, does not)."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if _is_shop_checkout(parent):
                return parent
    raise StackError(
        f"cannot find the shop checkout (pyproject.toml and src/shop) above {__file__} or the "
        "working directory; run devstack from the checkout"
    )


def stack_dir() -> Path:
    """Where all data, logs and pidfiles live (`<repo>/.stack` unless SHOP_STACK_DIR says)."""
    explicit = os.environ.get(STACK_DIR_ENV)
    path = Path(explicit).expanduser().resolve() if explicit else repo_root() / ".stack"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)  # data, logs and the signing key: not for other local users
    return path


def say(message: str) -> None:
    """Progress for humans; stderr keeps stdout clean for `status` output."""
    print(f"stack: {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log, for error messages; empty if the log does not exist."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def with_tail(message: str, *logs: Path) -> str:
    """Append the tail of each non-empty log to an error message."""
    parts = [message]
    for log in logs:
        text = tail(log)
        if text.strip():
            parts.append(f"--- last {TAIL_LINES} lines of {log} ---\n{text}")
    return "\n".join(parts)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a short command and capture its output; failures become StackError with that output."""
    try:
        done = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    except FileNotFoundError:
        raise StackError(f"`{argv[0]}` not found; run the install step first") from None
    if check and done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise StackError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{output}")
    return done


def run_logged(
    argv: Sequence[str],
    *,
    log: Path,
    timeout: float,
    label: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    progress: Callable[[str], str] | None = None,
) -> int:
    """Run a long command with output to `log`, printing a heartbeat so nobody thinks it hangs.

    `progress` turns the log so far into a short summary for the heartbeat line.
    Returns the exit code; a timeout kills the command and raises.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        next_beat = started + 5.0
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started > timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise StackError(with_tail(f"{label} did not finish within {timeout:.0f}s", log))
            if now >= next_beat:
                summary = progress(_read_text(log)) if progress else ""
                say(f"{label} ... {now - started:.0f}s" + (f", {summary}" if summary else ""))
                next_beat = now + 10.0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def answers(url: str, timeout: float = 2) -> bool:
    """Whether `url` answers 200: a readiness check over HTTP."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def who_listens(port: int) -> str:
    """Best effort 'pid 123 (mysqld)' for whoever listens on a TCP port, for error messages."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # fields[1] is "ADDR:PORT" in hex, fields[3] the state ("0A" = LISTEN).
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    if not inodes:
        return "an unknown process"
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        name = (proc / "comm").read_text().strip()
                        return f"pid {proc.name} ({name})"
    return "another process"


# --- pids ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat split after the command name (which may contain spaces and parens)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After ")" come: state(0) ppid(1) pgrp(2) ... starttime(19).
    return raw.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect the exit status if the process happens to be our child, so it is no zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        fields = _stat_fields(int(proc.name))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(proc.name))
    return members


@dataclass(frozen=True)
class Daemon:
    """One background process of the stack and where its files go.

    `ports[0]` is the port it serves (and what `status` shows); all of `ports` must be free
    before it starts. `log` is the log worth reading when it fails; `console` receives its
    stdout and stderr (often the same file).
    """

    name: str
    ports: tuple[int, ...]
    directory: Path
    log: Path
    console: Path
    ready_timeout: float

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def pidfile(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def logs(self) -> tuple[Path, ...]:
        return (self.log,) if self.log == self.console else (self.log, self.console)

    def pid(self) -> int | None:
        """Our process if the pidfile names a live one (same pid *and* start time), else None."""
        try:
            pid_text, ticks_text = self.pidfile.read_text().split()
            pid, ticks = int(pid_text), int(ticks_text)
        except (OSError, ValueError):
            return None
        _reap(pid)
        if _start_ticks(pid) != ticks:
            return None
        return pid

    def write_pid(self, pid: int) -> None:
        ticks = _start_ticks(pid)
        if ticks is None:
            raise StackError(with_tail(f"{self.name} exited immediately", *self.logs))
        tmp = self.pidfile.with_suffix(".pid.tmp")
        tmp.write_text(f"{pid} {ticks}\n")
        tmp.replace(self.pidfile)

    def clear_pid(self) -> None:
        self.pidfile.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(daemon: Daemon, timeout: float) -> Iterator[None]:
    """Serialise start/stop of one daemon across processes (parallel test runs, two shells)."""
    daemon.directory.mkdir(parents=True, exist_ok=True)
    with (daemon.directory / f".{daemon.name}.lock").open("w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"another process is starting or stopping {daemon.name} "
                        f"(lock {fh.name} held for {timeout:.0f}s)"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# A throwaway interpreter starts the server and exits at once, so the server is never a child
# of the caller: no zombies and no "subprocess still running" ResourceWarning in a test run,
# and it survives the CLI that launched it.
_SPAWNER = """
import json, subprocess, sys
spec = json.load(sys.stdin)
with open(spec["console"], "ab") as out:
    proc = subprocess.Popen(
        spec["argv"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        cwd=spec["cwd"], env=spec["env"], start_new_session=True,
    )
print(proc.pid)
"""


def spawn_detached(argv: Sequence[str], *, console: Path, env: Mapping[str, str], cwd: Path) -> int:
    """Start argv in its own session with output appended to `console`; return its pid."""
    console.parent.mkdir(parents=True, exist_ok=True)
    spec = {"argv": list(argv), "console": str(console), "env": dict(env), "cwd": str(cwd)}
    done = run(
        [sys.executable, "-I", "-W", "ignore", "-c", _SPAWNER],
        input_text=json.dumps(spec),
        timeout=30,
    )
    return int(done.stdout.strip())


def _fmt_ports(ports: Sequence[int]) -> str:
    return ", ".join(str(p) for p in ports)


def _check_ports_free(daemon: Daemon) -> None:
    for port in daemon.ports:
        if port_open(port):
            raise StackError(
                f"cannot start {daemon.name}: port {port} on {HOST} is already in use by "
                f"{who_listens(port)}, which was not started by devstack "
                f"(it needs ports {_fmt_ports(daemon.ports)}); stop that process or "
                "configure another port"
            )


def _wait_ready(daemon: Daemon, pid: int, ready: Callable[[], bool], started: float) -> None:
    """Poll `ready` until it holds; fail fast if the process dies, stop it on timeout."""
    deadline = started + daemon.ready_timeout
    next_beat = started + 15.0
    while True:
        if ready():
            return
        now = time.monotonic()
        if daemon.pid() != pid:
            daemon.clear_pid()
            raise StackError(
                with_tail(f"{daemon.name} exited while starting; see {daemon.log}", *daemon.logs)
            )
        if now > deadline:
            message = with_tail(
                f"{daemon.name} did not become ready within {daemon.ready_timeout:.0f}s; "
                f"see {daemon.log}",
                *daemon.logs,
            )
            _terminate(daemon, pid)
            raise StackError(message)
        if now >= next_beat:
            say(f"still waiting for {daemon.name} ({now - started:.0f}s)")
            next_beat = now + 15.0
        time.sleep(0.25)


@dataclass(frozen=True)
class Launch:
    """How to run a daemon: computed just before starting, after its one-time preparation."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path


def ensure_started(
    daemon: Daemon, *, prepare: Callable[[], Launch], ready: Callable[[], bool]
) -> bool:
    """Start `daemon` unless ours already runs; wait until `ready`. True if it was started now.

    `prepare` does first-run work (init data dirs, write configs) and says how to launch.
    """
    with locked(daemon, timeout=daemon.ready_timeout + STOP_TIMEOUT):
        pid = daemon.pid()
        if pid is not None:
            if ready():
                say(f"{daemon.name} already running (pid {pid})")
                return False
            # Ours but not answering yet: another caller started it a moment ago.
            say(f"{daemon.name} (pid {pid}) is starting; waiting")
            _wait_ready(daemon, pid, ready, time.monotonic())
            return False
        daemon.clear_pid()
        _check_ports_free(daemon)
        started = time.monotonic()
        say(f"starting {daemon.name} ...")
        launch = prepare()
        pid = spawn_detached(launch.argv, console=daemon.console, env=launch.env, cwd=launch.cwd)
        daemon.write_pid(pid)
        _wait_ready(daemon, pid, ready, started)
        say(
            f"{daemon.name} ready in {time.monotonic() - started:.1f}s "
            f"(pid {pid}, {HOST}:{daemon.port})"
        )
        return True


def _terminate(daemon: Daemon, pid: int) -> None:
    """SIGTERM the whole process group, wait, then SIGKILL whatever is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        daemon.clear_pid()
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        _reap(pid)
        if not group_members(pid):
            break
        time.sleep(0.1)
    else:
        say(f"{daemon.name} ignored SIGTERM for {STOP_TIMEOUT:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while group_members(pid) and time.monotonic() < kill_deadline:
            _reap(pid)
            time.sleep(0.1)
    _reap(pid)
    daemon.clear_pid()


def ensure_stopped(daemon: Daemon) -> bool:
    """Stop our process if it runs; True if something was stopped. Stopped already is fine."""
    with locked(daemon, timeout=daemon.ready_timeout + STOP_TIMEOUT):
        pid = daemon.pid()
        if pid is None:
            daemon.clear_pid()
            return False
        started = time.monotonic()
        say(f"stopping {daemon.name} (pid {pid}) ...")
        _terminate(daemon, pid)
        say(f"{daemon.name} stopped in {time.monotonic() - started:.1f}s")
        return True


def describe(daemon: Daemon, ready: Callable[[], bool]) -> str:
    """One status line: running / starting / stopped (and a foreign port holder, if any)."""
    pid = daemon.pid()
    if pid is not None:
        where = f"{HOST}:{daemon.port}"
        return f"running pid {pid} on {where}" if ready() else f"starting pid {pid} on {where}"
    if port_open(daemon.port):
        return f"stopped (port {daemon.port} is used by {who_listens(daemon.port)})"
    return "stopped"


def find_program(name: str, *extra_dirs: str) -> str | None:
    """A program on PATH or in sbin dirs, which non-root PATHs often lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in (*extra_dirs, "/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages non-interactively; refresh the package index only if needed.

    Skipping `apt-get update` when the cached index is good enough saves a minute on most
    machines; a failed install (stale or empty index) gets one update and a retry.
    """
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise StackError(f"apt-get not found; install these packages by hand: {' '.join(packages)}")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise StackError(
                "installing packages needs root; run: "
                f"apt-get install --no-install-recommends {' '.join(packages)}"
            )
        prefix = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _no_service_starts():
        _apt_install(prefix, packages, env)


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    """Keep the packages' init scripts from starting the *system* MariaDB/RabbitMQ.

    On a machine with an init system, installing mariadb-server starts Debian's service on
    port 3306, which would then block our own instance. A policy-rc.d that answers 101
    ("action forbidden") is Debian's documented way to prevent that; we only add one where
    none exists (container images usually ship their own) and remove it afterwards.
    """
    policy = Path("/usr/sbin/policy-rc.d")
    if os.geteuid() != 0 or policy.exists():
        yield
        return
    policy.write_text(
        "#!/bin/sh\n# temporary, written by devstack during apt-get install\nexit 101\n"
    )
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def _apt_install(prefix: list[str], packages: Sequence[str], env: Mapping[str, str]) -> None:
    log = stack_dir() / "apt.log"
    install = [
        *prefix,
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        *packages,
    ]
    label = f"apt-get install {' '.join(packages)}"
    say(f"installing Debian packages: {' '.join(packages)} (log: {log})")
    if run_logged(install, log=log, timeout=1800, label=label, env=env) == 0:
        return
    say("install failed; running apt-get update and retrying")
    update_log = stack_dir() / "apt-update.log"
    update = [*prefix, "apt-get", "update", "-q"]
    if run_logged(update, log=update_log, timeout=600, label="apt-get update", env=env) != 0:
        raise StackError(with_tail("apt-get update failed", update_log))
    if run_logged(install, log=log, timeout=1800, label=label, env=env) != 0:
        raise StackError(with_tail(f"{label} failed", log))
