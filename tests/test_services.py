"""The test session's own PostgreSQL and Redis (tests/services.py): found, started, kept apart, and a
missing binary named in one line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis

from proxy.settings import REPO_ROOT
from tests.conftest import postgres_dsn, redis_url
from tests.services import POSTGRES_ENV, REDIS_ENV, SESSION, Services, missing, nginx_binary, postgres_bindir


def tools(folder: Path, *names: str) -> Path:
    """A folder of stand-in executables."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        (folder / name).chmod(0o755)
    return folder


def test_a_missing_binary_is_one_line_naming_what_to_install(tmp_path: Path) -> None:
    empty = str(tools(tmp_path / "bin"))
    nowhere = tmp_path / "no-postgresql"
    line = missing(env={}, path=empty, debian_root=nowhere, sbin=nowhere)
    assert line is not None and "\n" not in line
    assert line.endswith("apt-get install postgresql redis-server nginx npm")
    for what in ("initdb", "pg_ctl", "psql", "redis-server", "nginx", "npm"):
        assert what in line

    # servers named in the environment need no binaries; npm is needed only to fetch the schema
    given = {POSTGRES_ENV: "postgresql://x@127.0.0.1:1/x", REDIS_ENV: "redis://127.0.0.1:1/0"}
    assert (missing(env=given, path=empty, debian_root=nowhere, sbin=nowhere) or "").endswith(
        "apt-get install nginx npm"
    )
    assert (missing(env=given, path=empty, debian_root=nowhere, need_npm=False, sbin=nowhere) or "").endswith(
        "apt-get install nginx"
    )
    only_redis = missing(
        env={POSTGRES_ENV: "postgresql://x@127.0.0.1:1/x"}, path=empty, debian_root=nowhere, sbin=nowhere
    )
    assert (only_redis or "").endswith("apt-get install redis-server nginx npm")
    # Debian's nginx in /usr/sbin, off a plain user's PATH, is found there
    sbin = tools(tmp_path / "sbin", "nginx")
    assert missing(env=given, path=empty, debian_root=nowhere, need_npm=False, sbin=sbin) is None

    full = str(tools(tmp_path / "full", "initdb", "pg_ctl", "psql", "redis-server", "nginx", "npm"))
    assert missing(env={}, path=full, debian_root=nowhere, sbin=nowhere) is None


def test_postgresql_is_found_in_debians_folder_off_the_path(tmp_path: Path) -> None:
    """Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, not on the PATH: the
    newest complete version there; an initdb on the PATH wins, with its siblings where it really is."""
    root = tmp_path / "lib" / "postgresql"
    for version in ("9.6", "13", "15"):
        tools(root / version / "bin", "initdb", "pg_ctl", "psql")
    tools(root / "16" / "bin", "initdb", "pg_ctl")  # no psql: incomplete, passed over
    empty = str(tools(tmp_path / "bin"))
    assert postgres_bindir(path=empty, debian_root=root) == root / "15" / "bin"

    on_path = tools(tmp_path / "path")
    (on_path / "initdb").symlink_to(root / "13" / "bin" / "initdb")
    assert postgres_bindir(path=str(on_path), debian_root=root) == root / "13" / "bin"
    assert postgres_bindir(path=empty, debian_root=tmp_path / "none") is None


async def test_the_session_postgresql_answers_as_the_test_role_not_a_superuser() -> None:
    conn = await asyncpg.connect(postgres_dsn())
    try:
        row = await conn.fetchrow(
            "SELECT current_user AS who, current_database() AS db,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS super"
        )
        assert row is not None and (row["who"], row["super"]) == ("fhir_facade", False)
        if not os.environ.get(POSTGRES_ENV):
            assert row["db"] == "fhir_facade_test"
        await conn.execute("CREATE TEMP TABLE t (x int)")  # it may create what the store needs
    finally:
        await conn.close()


def test_a_second_session_gets_its_own_servers_and_stops_them() -> None:
    """Two sessions at once (two engineers, CI beside a developer) never share a port or a database."""
    ours = (urlsplit(postgres_dsn()).port, urlsplit(redis_url()).port)
    other = Services(env={})
    try:
        theirs = (urlsplit(other.postgres_dsn()).port, urlsplit(other.redis_url()).port)
        assert theirs[0] != ours[0] and theirs[1] != ours[1]
        redis.Redis.from_url(other.redis_url()).set("only-theirs", b"1")
        assert redis.Redis.from_url(redis_url()).get("only-theirs") is None
        folders = [s.workdir for s in other.started]
        assert len(folders) == 2 and all(f.is_dir() for f in folders)
    finally:
        other.close()
    for port in theirs:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port or 0)) != 0  # stopped
    assert not any(f.exists() for f in folders)  # and removed


def test_servers_named_in_the_environment_win_and_none_is_started() -> None:
    given = {POSTGRES_ENV: "postgresql://u:p@127.0.0.1:1/db", REDIS_ENV: "redis://127.0.0.1:1/3"}
    services = Services(env=given)
    assert (services.postgres_dsn(), services.redis_url()) == (given[POSTGRES_ENV], given[REDIS_ENV])
    assert services.started == ()
    assert SESSION.env is os.environ  # (the session's reads the real environment)


def test_a_session_without_redis_server_fails_at_start_saying_what_to_install(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != REDIS_ENV}
    env.update(
        PATH=str(tools(tmp_path / "bin", "npm")),  # no redis-server anywhere
        FHIR_FACADE_TEST_POSTGRES_DSN="postgresql://x@127.0.0.1:1/x",
        PYTHONPATH=str(REPO_ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_timeutil.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 4, done.stdout + done.stderr  # a usage error: not a pass, not a skip
    (line,) = [ln for ln in (done.stdout + done.stderr).splitlines() if "redis-server" in ln]
    assert line.startswith("ERROR: ") and line.endswith("apt-get install redis-server")
    assert "passed" not in done.stdout


def test_a_session_stops_its_servers_when_it_ends(tmp_path: Path) -> None:
    """A whole pytest session (the project's conftest as a plugin) that uses both servers leaves
    nothing running and no folder behind."""
    (tmp_path / "test_uses_both.py").write_text(
        "from tests.conftest import postgres_dsn, redis_url\n"
        "from tests.services import SESSION\n\n"
        "def test_uses_both():\n"
        "    print('USED', postgres_dsn(), redis_url(), *(s.workdir for s in SESSION.started))\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in (POSTGRES_ENV, REDIS_ENV)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-s", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (used,) = [ln.split()[1:] for ln in done.stdout.splitlines() if ln.startswith("USED")]
    dsn, url, *folders = used
    assert len(folders) == 2
    for port in (urlsplit(dsn).port, urlsplit(url).port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port or 0)) != 0
    assert not any(Path(f).exists() for f in folders)


def test_apt_install_installs_only_what_is_missing(tmp_path: Path) -> None:
    """tests/apt-install, the first step of the README's test command, asks apt for the packages of
    the binaries not found (here: no redis-server, no npm on the PATH) and for nothing else."""
    bin_dir = tools(tmp_path / "bin")
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n', encoding="utf-8")
    (bin_dir / "apt-get").chmod(0o755)
    for name in ("dirname", "id"):
        found = shutil.which(name)
        assert found is not None
        (bin_dir / name).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    argv = ["/bin/sh", str(REPO_ROOT / "tests" / "apt-install")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    postgres = [] if postgres_bindir(path=str(bin_dir)) else ["postgresql"]
    nginx = [] if nginx_binary(path=str(bin_dir)) else ["nginx"]  # (Debian's, in /usr/sbin, if here)
    assert calls == ["update -q", " ".join(["install -y -q", *postgres, "redis-server", *nginx, "npm"])]

    tools(bin_dir, "initdb", "pg_ctl", "psql", "redis-server", "nginx", "npm")  # all there: apt is not asked
    log.unlink()
    assert subprocess.run(argv, env=env, timeout=60, check=False).returncode == 0
    assert not log.exists()
