"""Throwaway PostgreSQL and Redis servers for one test session, started from the installed binaries.

No system service has to run: the session starts its own servers on free loopback ports, each in its
own temporary directory, the first time a test needs one, and stops them when the session ends
(``Services.close``), the way pytest-postgresql and pytest-redis do. Two sessions at once (two
engineers, CI beside a developer) each get their own ports and data directories.

- PostgreSQL: ``initdb`` into a temporary directory (fsync off: nothing here has to survive a
  crash), ``pg_ctl start`` on 127.0.0.1 and a free port, its Unix socket in that directory; the
  superuser ``postgres`` (trusted on the socket, which only its owner can reach) creates the role
  ``fhir_facade`` with a random password (needed over TCP) and its database ``fhir_facade_test``.
  PostgreSQL refuses to run
  as root, so as root the cluster belongs to the user ``postgres`` (Debian's package makes it) or
  else ``nobody``. Debian keeps the binaries in /usr/lib/postgresql/<version>/bin, off the PATH:
  they are looked for there too (the newest version).
- Redis: ``redis-server`` in the foreground on 127.0.0.1 and a free port, nothing saved to disk, a
  random password (no other session, and no other user of the machine, flushes it by mistake).
- nginx (the scale-out test, tests/scaleout): started per test, not per session, with the test's own
  configuration (``start_nginx``): in the foreground on 127.0.0.1 and a free port, its pid file, logs
  and temporary files in its own directory (``-p``, ``-e``: nothing under /var). Debian installs it
  in /usr/sbin, off a plain user's PATH: it is looked for there too.

``FHIR_FACADE_TEST_POSTGRES_DSN`` and ``FHIR_FACADE_TEST_REDIS_URL``, when set, win: the session then
uses those servers and starts none. A binary that is missing fails the session at its start with
one line saying what to install (``missing``), never a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_ENV = "FHIR_FACADE_TEST_POSTGRES_DSN"
REDIS_ENV = "FHIR_FACADE_TEST_REDIS_URL"
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")  # <version>/bin/initdb ...: Debian's, not on the PATH
DEBIAN_SBIN = Path("/usr/sbin")  # Debian's nginx: not on a plain user's PATH
POSTGRES_TOOLS = ("initdb", "pg_ctl", "psql")
ROLE = "fhir_facade"
DATABASE = "fhir_facade_test"
START_TIMEOUT_S = 30.0
_PORT_TRIES = 5  # a free port can be taken between choosing it and the server binding it


class ServiceError(RuntimeError):
    """A throwaway server could not be started; the message carries the tail of its log."""


# -- finding the binaries --------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.name.split(".") if p.isdigit()) or (-1,)


def postgres_bindir(path: str | None = None, debian_root: Path = DEBIAN_POSTGRES) -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``psql`` of one PostgreSQL version: where the
    PATH's ``initdb`` really lives (symlinks followed), else Debian's newest
    /usr/lib/postgresql/<version>/bin; None when there is none. ``path``: a PATH to search instead
    of the environment's."""
    found = shutil.which("initdb", path=path)
    candidates = [Path(found).resolve().parent] if found else []
    if debian_root.is_dir():
        versions = sorted((d for d in debian_root.iterdir() if d.is_dir()), key=_version_key, reverse=True)
        candidates += [v / "bin" for v in versions]
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in POSTGRES_TOOLS):
            return bindir
    return None


def nginx_binary(path: str | None = None, sbin: Path = DEBIAN_SBIN) -> Path | None:
    """The ``nginx`` on the PATH (``path``: a PATH to search instead), else Debian's in /usr/sbin."""
    found = shutil.which("nginx", path=path)
    if found:
        return Path(found)
    candidate = sbin / "nginx"
    return candidate if os.access(candidate, os.X_OK) else None


def missing(
    env: Mapping[str, str] | None = None,
    path: str | None = None,
    debian_root: Path = DEBIAN_POSTGRES,
    need_npm: bool = True,
    sbin: Path = DEBIAN_SBIN,
) -> str | None:
    """One line naming what the test session cannot find and the command that installs it, or None.

    PostgreSQL is not needed when ``FHIR_FACADE_TEST_POSTGRES_DSN`` names a server, Redis not when
    ``FHIR_FACADE_TEST_REDIS_URL`` does; nginx always (the scale-out test starts its own); npm only
    fetches the R4 schema once (``need_npm``)."""
    env = os.environ if env is None else env
    gaps: list[tuple[str, str]] = []  # (what, Debian package)
    if not env.get(POSTGRES_ENV) and postgres_bindir(path, debian_root) is None:
        gaps.append(
            (f"PostgreSQL's initdb, pg_ctl and psql (on the PATH or in {debian_root}/*/bin)", "postgresql")
        )
    if not env.get(REDIS_ENV) and shutil.which("redis-server", path=path) is None:
        gaps.append(("redis-server", "redis-server"))
    if nginx_binary(path, sbin) is None:
        gaps.append((f"nginx (on the PATH or in {sbin})", "nginx"))
    if need_npm and shutil.which("npm", path=path) is None:
        gaps.append(("npm (it fetches the R4 schema once)", "npm"))
    if not gaps:
        return None
    sudo = "" if os.geteuid() == 0 else "sudo "
    whats, packages = "; ".join(w for w, _ in gaps), " ".join(p for _, p in gaps)
    return (
        f"the test session starts its own PostgreSQL, Redis and nginx and cannot find {whats}"
        f" — install: {sudo}apt-get install {packages}"
    )


# -- the servers -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice: no two alike)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class _RunAs:
    """Who runs the PostgreSQL tools: ourselves, or (as root, which initdb refuses) a plain user."""

    user: str | None = None
    uid: int = -1
    gid: int = -1

    @classmethod
    def for_postgres(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(name, entry.pw_uid, entry.pw_gid)
        raise ServiceError("running as root and there is no user 'postgres' or 'nobody' to run PostgreSQL as")

    def own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, argv: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"user": self.uid, "group": self.gid, "extra_groups": []} if self.user else {}
        env = {**os.environ, "LC_ALL": "C.UTF-8", "PGTZ": "UTC"}
        if self.user:
            env["HOME"] = str(cwd)
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **extra,
        )


def _workdir(prefix: str, owner: _RunAs) -> Path:
    base = Path(tempfile.gettempdir())
    if owner.user is not None and not os.stat(base).st_mode & 0o001:
        base = Path("/tmp")  # the plain user must be able to reach its directory
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    owner.own(work)
    return work


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Postgres:
    dsn: str
    port: int
    workdir: Path
    _stop: Callable[[], None] = field(repr=False)

    def stop(self) -> None:
        self._stop()


def start_postgres(bindir: Path) -> Postgres:
    """initdb + pg_ctl start on a free port + the role and database; ``stop()`` removes it all."""
    owner = _RunAs.for_postgres()
    work = _workdir("fhir-facade-test-pg-", owner)
    data, log = work / "data", work / "postgres.log"
    password = secrets.token_hex(16)
    try:
        done = owner.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
            work,
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed: {(done.stderr or done.stdout).strip()}")
        for _ in range(_PORT_TRIES):
            port = free_port()
            options = (
                f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off"
            )
            ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options]
            done = owner.run([*ctl, "start"], work)
            if done.returncode == 0:
                break
            if "already in use" not in _tail(log, 40):
                raise ServiceError(f"pg_ctl start failed: {done.stderr.strip()}\n{_tail(log)}")
        else:
            raise ServiceError(f"PostgreSQL found no free port in {_PORT_TRIES} tries:\n{_tail(log)}")

        def stop() -> None:
            owner.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], work)
            shutil.rmtree(work, ignore_errors=True)

        psql = [str(bindir / "psql"), "-h", str(work), "-p", str(port), "-U", "postgres", "-d", "postgres"]
        sql = f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\nCREATE DATABASE {DATABASE} OWNER {ROLE};\n"
        done = owner.run(
            [*psql, "-v", "ON_ERROR_STOP=1", "-q"], work, stdin=sql
        )  # (stdin: no password in ps)
        if done.returncode != 0:
            stop()
            raise ServiceError(f"creating the test role and database failed: {done.stderr.strip()}")
    except BaseException:
        if not (data / "postmaster.pid").exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    return Postgres(f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{DATABASE}", port, work, stop)


@dataclass
class Redis:
    url: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    workdir: Path = field(repr=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _redis_answers(port: int, password: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2 and (chunk := s.recv(64)):
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


def start_redis(binary: Path) -> Redis:
    """redis-server in the foreground on a free port, persisting nothing; ``stop()`` ends it."""
    work = Path(tempfile.mkdtemp(prefix="fhir-facade-test-redis-"))
    log = work / "redis.log"
    password = secrets.token_hex(16)
    for _ in range(_PORT_TRIES):
        port = free_port()
        conf = work / "redis.conf"  # (a file only we read: no password in ps)
        conf.write_text(
            f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {work}\ndaemonize no\n'
            f'logfile ""\nrequirepass {password}\n',
            encoding="utf-8",
        )
        argv = [str(binary), str(conf)]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _redis_answers(port, password):
                return Redis(f"redis://:{password}@127.0.0.1:{port}/0", port, process, work)
            time.sleep(0.02)
        if process.poll() is None:  # alive but not answering in time
            process.kill()
        process.wait()
        if "already in use" not in _tail(log, 40):
            break
    reason = _tail(log)
    shutil.rmtree(work, ignore_errors=True)
    raise ServiceError(f"redis-server did not start:\n{reason}")


@dataclass
class Nginx:
    url: str  # http://127.0.0.1:<port>
    port: int
    workdir: Path  # nginx.conf, the site's file, error.log, access.log, temporary files
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # (SIGTERM: nginx's fast shutdown)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


# The main context around a site's file (a server block for http {}, as /etc/nginx/conf.d/ holds):
# everything nginx writes goes to the work directory. The access log names the upstream that
# answered each request and the request id sent, so a test can see which host answered what.
_NGINX_MAIN = """daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstream '$http_x_request_id $upstream_addr $status';
    access_log {work}/access.log upstream;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {work}/site.conf;
}}
"""


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_nginx(binary: Path, site: Callable[[int], str]) -> Nginx:
    """nginx in the foreground, ``site(port)`` (a server block listening on 127.0.0.1:port, a free
    port) included in its own http {}; ``stop()`` ends it and removes its directory."""
    work = Path(tempfile.mkdtemp(prefix="fhir-facade-test-nginx-"))
    work.chmod(0o755)  # (as root, its workers run as nobody)
    log = work / "error.log"
    (work / "nginx.conf").write_text(_NGINX_MAIN.format(work=work), encoding="utf-8")
    for _ in range(_PORT_TRIES):
        port = free_port()
        (work / "site.conf").write_text(site(port), encoding="utf-8")
        argv = [str(binary), "-p", str(work), "-e", str(log), "-c", str(work / "nginx.conf")]
        with (work / "nginx.out").open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _listens(port):
                return Nginx(f"http://127.0.0.1:{port}", port, work, process)
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait()
        if "in use" not in _tail(log, 40):
            break
    reason = _tail(log) + "\n" + _tail(work / "nginx.out")
    shutil.rmtree(work, ignore_errors=True)
    raise ServiceError(f"nginx did not start:\n{reason}")


def find_nginx() -> Path:
    """The nginx binary, or a ServiceError naming the package to install."""
    binary = nginx_binary()
    if binary is None:
        raise ServiceError(missing(env={POSTGRES_ENV: "-", REDIS_ENV: "-"}, need_npm=False) or "no nginx")
    return binary


class Services:
    """The session's servers, each started on first use and stopped by ``close()``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self._postgres: Postgres | None = None
        self._redis: Redis | None = None

    def postgres_dsn(self) -> str:
        """``FHIR_FACADE_TEST_POSTGRES_DSN``, else the DSN of this session's own PostgreSQL."""
        given = self.env.get(POSTGRES_ENV)
        if given:
            return given
        if self._postgres is None:
            bindir = postgres_bindir()
            if bindir is None:
                raise ServiceError(missing(self.env, need_npm=False) or "no PostgreSQL")
            self._postgres = start_postgres(bindir)
        return self._postgres.dsn

    def redis_url(self) -> str:
        """``FHIR_FACADE_TEST_REDIS_URL``, else the URL of this session's own Redis."""
        given = self.env.get(REDIS_ENV)
        if given:
            return given
        if self._redis is None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise ServiceError(missing(self.env, need_npm=False) or "no redis-server")
            self._redis = start_redis(Path(binary))
        return self._redis.url

    @property
    def started(self) -> tuple[Postgres | Redis, ...]:
        return tuple(s for s in (self._postgres, self._redis) if s is not None)

    def close(self) -> None:
        for service in self.started:
            service.stop()
        self._postgres = self._redis = None


# The session's (or, under pytest-xdist, each worker's) one instance. It lives here, not in
# conftest.py, so that it stays one however conftest is loaded (a test run, or `-p tests.conftest`).
SESSION = Services()
atexit.register(SESSION.close)  # (conftest's pytest_sessionfinish closes it; this if that never ran)


if __name__ == "__main__":
    # `python3 tests/services.py`: the Debian packages of the binaries the tests cannot find, one line
    # (empty when none is missing); tests/apt-install installs them. The standard library only, so it
    # runs before the project is installed.
    import sys

    gap = missing(env={})
    print(gap.rpartition("apt-get install ")[2] if gap else "")
    sys.exit(0)
