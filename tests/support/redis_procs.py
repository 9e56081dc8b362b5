"""Real, private Redis processes for integration tests.

Every server started here is a child ``redis-server`` bound to ``127.0.0.1`` on a free port,
with persistence off and its working directory, log and sockets in a private temporary
directory. Nothing here ever talks to the shared Redis on port 6379.

Public API:

* :func:`free_port` -- a free loopback TCP port (see the race note there).
* :func:`wait_until` -- poll a predicate until it returns something truthy, with a deadline.
* :class:`TlsFiles` / :func:`make_tls_files` -- a throwaway CA plus a server certificate.
* :class:`RedisProcess` -- one standalone ``redis-server`` (password, unix socket, TLS, extras).
* :class:`SentinelProcess` -- one ``redis-server --sentinel`` (normally made by the set below).
* :class:`RedisSentinelSet` -- master + replica + N sentinels, with a ``failover()`` helper.
* :class:`RedisClusterSet` -- an N-master Redis Cluster created with ``redis-cli --cluster``.

Every class is a context manager: ``__enter__`` starts (and waits until ready), ``__exit__``
stops every process and deletes the temporary directory, including after a test failure.
``stop()`` (graceful) and ``kill()`` (SIGKILL, a simulated crash) keep the directory so that
``restart()`` can bring the server back on the same port. An ``atexit`` hook SIGKILLs anything
still running when the interpreter exits, so a forgotten ``close()`` does not leak processes.

The classes are synchronous and safe to create and tear down from pytest fixtures of any
scope; they do not touch the event loop, so async tests can use them too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "HOST",
    "RedisClusterSet",
    "RedisProcess",
    "RedisSentinelSet",
    "RedisStartError",
    "SentinelProcess",
    "ServerProcess",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "wait_until",
]

HOST = "127.0.0.1"
"""Every server binds this address only."""

_T = TypeVar("_T")

_POLL_INTERVAL = 0.02
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin.


# --------------------------------------------------------------------------------------------
# Ports and polling
# --------------------------------------------------------------------------------------------

_port_lock = threading.Lock()
_issued_ports: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks the port (bind to port 0); the probe socket is closed before returning,
    so another process may grab the port before ``redis-server`` binds it. The window is a
    few milliseconds. To keep it small and harmless:

    * ports are never handed out twice by this process (so a killed server's port is not
      given to another server while it waits to be restarted);
    * :class:`ServerProcess` retries a first start on a new port when the log says
      ``Address already in use`` (only when the port was chosen automatically);
    * startup checks that the server answering on the port is our child (``process_id``).
    """
    with _port_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((HOST, 0))
                port: int = probe.getsockname()[1]
            if port not in _issued_ports:
                _issued_ports.add(port)
                return port
    raise RuntimeError("could not find a free loopback port")


def wait_until(
    predicate: Callable[[], _T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (redis.RedisError, OSError),
) -> _T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Exceptions listed in ``ignore`` count as "not yet". Raises :class:`TimeoutError` naming
    ``what`` (and the last ignored exception / falsy value) once ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


def _quick_client(**kwargs: Any) -> redis.Redis:
    """A client for probing: short timeouts, no retries, no pool reuse surprises."""
    kwargs.setdefault("socket_connect_timeout", 1.0)
    kwargs.setdefault("socket_timeout", 1.0)
    kwargs.setdefault("decode_responses", True)
    return redis.Redis(retry=Retry(NoBackoff(), 0), **kwargs)


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files made by :func:`make_tls_files`.

    ``cert``/``key`` are the server certificate and key (SAN ``IP:127.0.0.1``,
    ``DNS:localhost``; extended key usage serverAuth *and* clientAuth, so the same pair can
    be used as a client certificate when a server requires ``tls-auth-clients yes``).
    ``ca_cert`` is the throwaway CA that signed it -- pass it as ``ssl_ca_certs``.
    """

    ca_cert: Path
    cert: Path
    key: Path


_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = vecna-async throwaway test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_SERVER_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the openssl CLI is not on PATH")
    done = subprocess.run(
        [binary, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a throwaway CA and a server cert for 127.0.0.1/localhost in ``directory``.

    Uses the ``openssl`` CLI with P-256 EC keys (fast to generate), valid for 3 days.
    Existing files in ``directory`` with the same names are overwritten.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.cnf").write_text(_CA_CONFIG)
    (directory / "server.cnf").write_text(_SERVER_CONFIG)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", "-new", "-config", "ca.cnf", *ec,
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "3",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", "-config", "server.cnf", *ec,
        "-keyout", "server.key", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", str(secrets.randbits(63)), "-days", "3",
        "-extfile", "server.cnf", "-extensions", "v3_server", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    return TlsFiles(
        ca_cert=directory / "ca.crt", cert=directory / "server.crt", key=directory / "server.key"
    )


# --------------------------------------------------------------------------------------------
# Process bookkeeping (atexit safety net)
# --------------------------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: set[ServerProcess] = set()
_owned_dirs: set[Path] = set()


def _reap_everything() -> None:
    with _live_lock:
        procs = list(_live)
        dirs = list(_owned_dirs)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_reap_everything)


def _make_owned_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    with _live_lock:
        _owned_dirs.add(path)
    return path


def _remove_owned_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with _live_lock:
        _owned_dirs.discard(path)


# --------------------------------------------------------------------------------------------
# One server process
# --------------------------------------------------------------------------------------------


class RedisStartError(RuntimeError):
    """A server did not come up; the message includes the tail of its log."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


class ServerProcess:
    """Lifecycle shared by :class:`RedisProcess` and :class:`SentinelProcess`.

    Subclasses provide the argv; this class owns Popen, readiness polling, signals,
    cleanup and the temporary directory.
    """

    _kind = "redis"

    def __init__(
        self,
        *,
        port: int | None,
        directory: Path | None,
        start_timeout: float,
        server_binary: str,
    ) -> None:
        self._auto_port = port is None
        self._port = free_port() if port is None else port
        if directory is None:
            self._dir = _make_owned_dir(f"vecna-{self._kind}-")
            self._owns_dir = True
        else:
            self._dir = directory.resolve()
            self._dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        self._start_timeout = start_timeout
        self._binary = server_binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._ever_started = False
        self._log_offset = 0
        self._stdout_offset = 0

    # -- subclass hooks ----------------------------------------------------------------------

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called before every spawn (e.g. to write config files)."""

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis(...)`` / ``redis.asyncio.Redis(...)``."""
        return {"host": HOST, "port": self._port}

    # -- properties --------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self._port)

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    @property
    def stdout_path(self) -> Path:
        return self._dir / "stdout.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child exists (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    def client(self, **overrides: Any) -> redis.Redis:
        """A sync ``redis.Redis`` for this server (``overrides`` win over the defaults)."""
        return redis.Redis(**{**self.connection_kwargs(), **overrides})

    def log_tail(self, lines: int = 40, *, current_run_only: bool = False) -> str:
        """Last ``lines`` lines of the server log and captured stdout/stderr."""
        parts = []
        for path, offset in (
            (self.log_path, self._log_offset),
            (self.stdout_path, self._stdout_offset),
        ):
            try:
                with path.open("rb") as fh:
                    if current_run_only:
                        fh.seek(offset)
                    data = fh.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            tail = "\n".join(data.splitlines()[-lines:])
            if tail.strip():
                parts.append(f"--- {path.name} ---\n{tail}")
        return "\n".join(parts) or "(no log output)"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the server and wait (polling, ~``start_timeout`` s) until it answers.

        Raises :class:`RedisStartError` with the log tail if it exits or never answers.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        attempts = 4 if self._auto_port and not self._ever_started else 1
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
            except RedisStartError as exc:
                if not exc.port_in_use or attempt == attempts - 1:
                    raise
                self._port = free_port()  # lost the free_port() race: try another port
            else:
                break
        self._ever_started = True
        return self

    def _spawn_and_wait(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._stdout_offset = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        argv = self._argv()
        with self.stdout_path.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        self._proc = proc
        self._paused = False
        with _live_lock:
            _live.add(self)
        try:
            self._wait_answering(proc, argv)
        except BaseException:
            self.kill()  # also on KeyboardInterrupt: never leave a half-started child
            raise

    def _wait_answering(self, proc: subprocess.Popen[bytes], argv: list[str]) -> None:
        deadline = time.monotonic() + self._start_timeout
        last_error: BaseException | None = None
        while True:
            code = proc.poll()
            if code is not None:
                self._forget_process()
                tail = self.log_tail(current_run_only=True)
                raise RedisStartError(
                    f"{self._kind} on port {self._port} exited with code {code} during start"
                    f"\nargv: {argv}\n{tail}",
                    port_in_use="Address already in use" in tail,
                )
            try:
                if self._answers_as(proc.pid):
                    return
            except (redis.RedisError, OSError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise RedisStartError(
                    f"{self._kind} on port {self._port} did not answer within "
                    f"{self._start_timeout:.1f}s (last error: {last_error!r})\nargv: {argv}\n"
                    f"{self.log_tail(current_run_only=True)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _answers_as(self, pid: int) -> bool:
        """True when the server on our port answers INFO and is really our child."""
        kwargs = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, **self.connection_kwargs()}
        with _quick_client(**kwargs) as probe:
            info = probe.info("server")
        return int(info.get("process_id", -1)) == pid

    def _forget_process(self) -> None:
        self._proc = None
        self._paused = False
        with _live_lock:
            _live.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL (simulates a crash) and reap the child. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget_process()

    def restart(self) -> Self:
        """Stop if running (gracefully), then start again on the same port and directory."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections hang (like a stalled/partitioned node)."""
        if self._proc is None or not self.running:
            raise RuntimeError(f"{self!r} is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the server and remove the temporary directory (if we created it)."""
        try:
            self.stop()
        finally:
            if self._owns_dir:
                _remove_owned_dir(self._dir)

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()  # __exit__ will not run: do not leak the temp dir
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {HOST}:{self._port} {state}>"


class RedisProcess(ServerProcess):
    """One private ``redis-server``.

    Always started with ``--bind 127.0.0.1 --port P --save "" --appendonly no --dir <tmp>
    --logfile <tmp>/redis.log``. Options:

    * ``port``: fixed port (default: :func:`free_port`).
    * ``password``: ``requirepass``; included in :attr:`url` and :meth:`connection_kwargs`.
    * ``unix_socket``: also listen on ``<tmp>/redis.sock`` (:attr:`unix_path`).
    * ``tls``: TLS only -- ``--port 0 --tls-port P`` with the given cert/key/CA;
      ``tls_auth_clients`` (default False) sets ``tls-auth-clients``. :attr:`url` becomes
      ``rediss://...``; the URL carries no CA, so pass ``ssl_ca_certs`` yourself or use
      :meth:`connection_kwargs` / :meth:`client`.
    * ``replicaof``: ``(host, port)`` -> ``--replicaof host port``. It is a plain attribute,
      read at every (re)start; :meth:`RedisSentinelSet.failover` updates it so a restarted
      old master comes back as a replica, like a config-rewriting deployment would.
    * ``extra_args``: appended verbatim (e.g. ``["--maxmemory", "10mb"]``).
    * ``directory``: use this directory instead of a private temp dir (then it is not
      deleted on close).

    ``--repl-diskless-sync-delay 0`` is also passed (before ``extra_args``): the Redis 7
    default of 5 s would make every replica's first sync take 5 s.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        unix_socket: bool = False,
        tls: TlsFiles | None = None,
        tls_auth_clients: bool = False,
        replicaof: tuple[str, int] | None = None,
        extra_args: Sequence[str] = (),
        directory: Path | None = None,
        start_timeout: float = 10.0,
        server_binary: str = "redis-server",
    ) -> None:
        super().__init__(
            port=port, directory=directory, start_timeout=start_timeout, server_binary=server_binary
        )
        self._password = password
        self._tls = tls
        self._tls_auth_clients = tls_auth_clients
        self.replicaof = replicaof
        self._extra_args = list(extra_args)
        self._unix_path: Path | None = None
        self._extra_dirs: list[Path] = []
        if unix_socket:
            path = self._dir / "redis.sock"
            if len(os.fsencode(path)) > _MAX_UNIX_PATH:
                # Long TMPDIR or caller directory: put the socket in a short private dir.
                short = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
                with _live_lock:
                    _owned_dirs.add(short)
                self._extra_dirs.append(short)
                path = short / "redis.sock"
            self._unix_path = path

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def tls(self) -> TlsFiles | None:
        return self._tls

    @property
    def unix_path(self) -> Path | None:
        """Path of the unix socket, or None when ``unix_socket`` was not requested."""
        return self._unix_path

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:P/0`` (``rediss://`` when TLS is on)."""
        scheme = "rediss" if self._tls is not None else "redis"
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"{scheme}://{auth}{HOST}:{self._port}/0"

    def connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"host": HOST, "port": self._port}
        if self._password is not None:
            kwargs["password"] = self._password
        if self._tls is not None:
            kwargs["ssl"] = True
            kwargs["ssl_ca_certs"] = str(self._tls.ca_cert)
            if self._tls_auth_clients:
                kwargs["ssl_certfile"] = str(self._tls.cert)
                kwargs["ssl_keyfile"] = str(self._tls.key)
        return kwargs

    def _argv(self) -> list[str]:
        argv = [
            self._binary,
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self._tls is None:
            argv += ["--port", str(self._port)]
        else:
            argv += [
                "--port", "0",
                "--tls-port", str(self._port),
                "--tls-cert-file", str(self._tls.cert),
                "--tls-key-file", str(self._tls.key),
                "--tls-ca-cert-file", str(self._tls.ca_cert),
                "--tls-auth-clients", "yes" if self._tls_auth_clients else "no",
            ]  # fmt: skip
        if self._password is not None:
            argv += ["--requirepass", self._password]
        if self._unix_path is not None:
            argv += ["--unixsocket", str(self._unix_path), "--unixsocketperm", "700"]
        if self.replicaof is not None:
            argv += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        argv += ["--repl-diskless-sync-delay", "0"]
        return argv + self._extra_args

    def close(self) -> None:
        try:
            super().close()
        finally:
            for path in self._extra_dirs:
                _remove_owned_dir(path)


class SentinelProcess(ServerProcess):
    """One ``redis-server <tmp>/sentinel.conf --sentinel`` monitoring one master.

    The config file (sentinel rewrites it, so it must be writable) is created on first
    start and kept across restarts, like a real deployment.
    """

    _kind = "sentinel"

    def __init__(
        self,
        *,
        master_name: str,
        master_port: int,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        port: int | None = None,
        directory: Path | None = None,
        start_timeout: float = 10.0,
        server_binary: str = "redis-server",
    ) -> None:
        super().__init__(
            port=port, directory=directory, start_timeout=start_timeout, server_binary=server_binary
        )
        self._master_name = master_name
        self.master_port = master_port
        """Port written into ``sentinel monitor`` when the config file is first created."""
        self._quorum = quorum
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms

    @property
    def config_path(self) -> Path:
        return self._dir / "sentinel.conf"

    def _prepare(self) -> None:
        if not self.config_path.exists():
            name = self._master_name
            self.config_path.write_text(
                f"sentinel monitor {name} {HOST} {self.master_port} {self._quorum}\n"
                f"sentinel down-after-milliseconds {name} {self._down_after_ms}\n"
                f"sentinel failover-timeout {name} {self._failover_timeout_ms}\n"
                f"sentinel parallel-syncs {name} 1\n"
            )

    def _argv(self) -> list[str]:
        return [
            self._binary, str(self.config_path), "--sentinel",
            "--bind", HOST,
            "--port", str(self._port),
            "--dir", str(self._dir),
            "--logfile", str(self.log_path),
        ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Sentinel: master + replica + sentinels
# --------------------------------------------------------------------------------------------


def _role(server: ServerProcess) -> str:
    with _quick_client(**server.connection_kwargs()) as probe:
        return str(probe.info("replication").get("role", ""))


class RedisSentinelSet:
    """A master, one replica (``--replicaof``) and ``sentinels`` (default 3) sentinels.

    :attr:`url` has the form::

        redis-sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0?master_name=<name>

    i.e. the comma-separated sentinel addresses, the database number as the path, and the
    monitored service name as the ``master_name`` query parameter. (This is our own scheme;
    redis-py does not parse it -- use :attr:`sentinel_addresses` and :attr:`master_name`
    with ``redis.sentinel.Sentinel``.)

    Timings default to ``down-after-milliseconds 1000`` and ``failover-timeout 3000`` so that
    :meth:`failover` normally completes in a few seconds.

    :attr:`master` and :attr:`replica` always name the processes by their *current* role:
    :meth:`failover` swaps them. After a ``kill=True`` failover :attr:`replica` is the dead
    old master; ``replica.restart()`` brings it back with ``--replicaof <new master>`` and
    :meth:`wait_ready` waits until the sentinels see it as a healthy replica again.
    """

    def __init__(
        self,
        *,
        master_name: str = "vecna-master",
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        start_timeout: float = 10.0,
        ready_timeout: float = 30.0,
    ) -> None:
        if sentinels < 1 or not 1 <= quorum <= sentinels:
            raise ValueError("need at least one sentinel and 1 <= quorum <= sentinels")
        self._master_name = master_name
        self._ready_timeout = ready_timeout
        self._dir = _make_owned_dir("vecna-sentinel-set-")
        try:
            self._master = RedisProcess(directory=self._dir / "master", start_timeout=start_timeout)
            self._replica = RedisProcess(
                directory=self._dir / "replica",
                start_timeout=start_timeout,
                replicaof=self._master.address,
            )
            self._sentinels = [
                SentinelProcess(
                    master_name=master_name,
                    master_port=self._master.port,
                    quorum=quorum,
                    down_after_ms=down_after_ms,
                    failover_timeout_ms=failover_timeout_ms,
                    directory=self._dir / f"sentinel-{i}",
                    start_timeout=start_timeout,
                )
                for i in range(sentinels)
            ]
        except BaseException:
            _remove_owned_dir(self._dir)
            raise

    @property
    def master_name(self) -> str:
        return self._master_name

    @property
    def master(self) -> RedisProcess:
        return self._master

    @property
    def replica(self) -> RedisProcess:
        return self._replica

    @property
    def sentinels(self) -> list[SentinelProcess]:
        return list(self._sentinels)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self._sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis-sentinel://{hosts}/0?master_name={quote(self._master_name, safe='')}"

    def start(self) -> Self:
        """Start master, replica and sentinels, then :meth:`wait_ready`."""
        try:
            self._master.start()
            # A lost free_port() race may have moved the master: wire up the final port.
            self._replica.replicaof = self._master.address
            for sentinel in self._sentinels:
                sentinel.master_port = self._master.port
            self._replica.start()
            # Sentinels read the replica's link status when they first connect: sync first.
            wait_until(
                lambda: _replica_link_up(self._replica, self._master),
                timeout=self._ready_timeout,
                what=f"replica {self._replica.address} to sync",
            )
            for sentinel in self._sentinels:
                sentinel.start()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _sentinel_view_ok(self, sentinel: SentinelProcess) -> bool:
        with _quick_client(**sentinel.connection_kwargs()) as probe:
            master = probe.sentinel_master(self._master_name)
            replicas = probe.sentinel_slaves(self._master_name)
        if not isinstance(master, dict):
            return False
        if (str(master["ip"]), int(master["port"])) != self._master.address:
            return False
        if not master["is_master"] or master["is_sdown"] or master["is_odown"]:
            return False
        if int(master["num-other-sentinels"]) < len(self._sentinels) - 1:
            return False
        if not self._replica.running:
            return True
        return any(
            (str(r["ip"]), int(r["port"])) == self._replica.address
            and not r["is_sdown"]
            and not r["is_disconnected"]
            for r in replicas
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until the running replica's link to the master is up and every running
        sentinel reports the master (not down), knows that replica (connected, not down)
        and knows all other sentinels.

        The replica's link state is read from the replica itself: sentinels refresh a
        replica's ``master-link-status`` only every 10 s, so waiting for them to say ``ok``
        would add up to 10 s after every (re)start or failover.
        """
        timeout = self._ready_timeout if timeout is None else timeout
        wait_until(
            lambda: not self._replica.running or _replica_link_up(self._replica, self._master),
            timeout=timeout,
            what=f"replica {self._replica.address} to sync with {self._master.address}",
        )
        running = [s for s in self._sentinels if s.running]
        wait_until(
            lambda: all(self._sentinel_view_ok(s) for s in running),
            timeout=timeout,
            what=f"sentinels to agree on master {self._master.address}",
        )

    def master_address(self) -> tuple[str, int]:
        """The master address as reported by the first running sentinel."""
        for sentinel in self._sentinels:
            if sentinel.running:
                with _quick_client(**sentinel.connection_kwargs()) as probe:
                    addr = probe.sentinel_get_master_addr_by_name(self._master_name)
                if isinstance(addr, tuple):
                    return (str(addr[0]), int(addr[1]))
        raise RuntimeError("no running sentinel reports a master")

    def _all_sentinels_report(self, old: tuple[str, int]) -> tuple[str, int] | None:
        seen: set[tuple[str, int]] = set()
        for sentinel in self._sentinels:
            if not sentinel.running:
                continue
            with _quick_client(**sentinel.connection_kwargs()) as probe:
                addr = probe.sentinel_get_master_addr_by_name(self._master_name)
            if not isinstance(addr, tuple):
                return None
            seen.add((str(addr[0]), int(addr[1])))
        if len(seen) != 1:
            return None
        (new,) = seen
        return None if new == old else new

    def failover(
        self, timeout: float = 30.0, *, kill: bool = True, demote_old: bool = True
    ) -> tuple[str, int]:
        """Fail the master over to the replica and return the new master address.

        ``kill=True`` (default) SIGKILLs the master -- an unplanned outage detected by the
        sentinels after ``down_after_ms``. ``kill=False`` asks the first sentinel for a
        ``SENTINEL FAILOVER`` (planned switch; the old master keeps running and this helper
        turns it into a replica of the new one with ``REPLICAOF`` right away -- left alone,
        sentinel does that only ~10 s later, and until then both report ``role:master``).
        ``demote_old=False`` leaves that to sentinel, for tests of that window.
        Waits until every running sentinel reports the new address and the new
        master reports ``role:master``; then swaps :attr:`master` and :attr:`replica`.
        """
        old = self._master.address
        if kill:
            self._master.kill()
        else:
            with _quick_client(**self._sentinels[0].connection_kwargs()) as probe:
                probe.sentinel_failover(self._master_name)
        new = wait_until(
            lambda: self._all_sentinels_report(old),
            timeout=timeout,
            what=f"sentinels to report a master other than {old}",
        )
        if new != self._replica.address:
            raise RuntimeError(f"sentinels promoted unknown server {new}")
        wait_until(
            lambda: _role(self._replica) == "master",
            timeout=timeout,
            what=f"{new} to report role:master",
        )
        self._master, self._replica = self._replica, self._master
        self._master.replicaof = None
        self._replica.replicaof = self._master.address
        if self._replica.running and demote_old:
            # Sentinel would demote the still-running old master only after it has seen it
            # claim role:master for ~8 s plus a 10 s INFO period; do it now instead.
            with _quick_client(**self._replica.connection_kwargs()) as probe:
                probe.replicaof(*self._master.address)
        return new

    def close(self) -> None:
        """Stop sentinels first (no failover during teardown), then data nodes."""
        try:
            for proc in [*self._sentinels, self._replica, self._master]:
                with contextlib.suppress(Exception):
                    proc.stop()
        finally:
            for proc in [*self._sentinels, self._replica, self._master]:
                proc.kill()
            _remove_owned_dir(self._dir)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _replica_link_up(replica: RedisProcess, master: RedisProcess) -> bool:
    with _quick_client(**replica.connection_kwargs()) as probe:
        info = probe.info("replication")
    return bool(
        info.get("role") == "slave"
        and info.get("master_link_status") == "up"
        and int(info.get("master_port", -1)) == master.port
    )


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------


def _cluster_info(node: RedisProcess) -> dict[str, str]:
    with _quick_client(**node.connection_kwargs()) as probe:
        raw = probe.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


class RedisClusterSet:
    """``masters`` (default 3, minimum 3) cluster nodes, no replicas, all slots assigned.

    Each node runs with ``--cluster-enabled yes --cluster-config-file <tmp>/nodes-P.conf
    --cluster-node-timeout <node_timeout_ms>`` and an explicitly chosen free cluster-bus port
    (``--cluster-port``, so the usual ``P + 10000`` need not be free). The cluster is created
    with ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.

    :attr:`url` is ``redis://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0`` (our own multi-host
    form); redis-py wants ``RedisCluster(startup_nodes=[ClusterNode(h, p), ...])`` built from
    :attr:`startup_nodes`.

    A node can be ``kill()``-ed and ``restart()``-ed; it reloads its nodes file and rejoins.
    Call :meth:`wait_ready` afterwards to wait for ``cluster_state:ok`` again.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        ready_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self._ready_timeout = ready_timeout
        self._node_timeout_ms = node_timeout_ms
        self._extra_args = list(extra_args)
        self._start_timeout = start_timeout
        self._dir = _make_owned_dir("vecna-cluster-set-")
        self._nodes = [self._new_node() for _ in range(masters)]

    def _new_node(self) -> RedisProcess:
        port = free_port()
        node_dir = self._dir / f"node-{port}"
        cluster_args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / f"nodes-{port}.conf"),
            "--cluster-node-timeout", str(self._node_timeout_ms),
            "--cluster-port", str(free_port()),
        ]  # fmt: skip
        return RedisProcess(
            port=port,
            directory=node_dir,
            start_timeout=self._start_timeout,
            extra_args=[*cluster_args, *self._extra_args],
        )

    def _start_node(self, index: int) -> None:
        for attempt in range(4):
            try:
                self._nodes[index].start()
            except RedisStartError as exc:
                if not exc.port_in_use or attempt == 3:
                    raise
                # Lost a free_port() race (client or bus port): fresh ports, fresh node.
                self._nodes[index] = self._new_node()
            else:
                return

    @property
    def nodes(self) -> list[RedisProcess]:
        return list(self._nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [n.address for n in self._nodes]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes) + "/0"

    def start(self) -> Self:
        """Start all nodes, create the cluster, then :meth:`wait_ready`."""
        try:
            for index in range(len(self._nodes)):
                self._start_node(index)
            self._create()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH")
        argv = [cli, "--cluster", "create", *(f"{h}:{p}" for h, p in self.startup_nodes)]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _node_ready(self, node: RedisProcess) -> bool:
        info = _cluster_info(node)
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_assigned") == "16384"
            and info.get("cluster_slots_ok") == "16384"
            and info.get("cluster_known_nodes") == str(len(self._nodes))
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until every running node says ``cluster_state:ok``, all 16384 slots are
        assigned and ok, and it knows every node."""
        wait_until(
            lambda: all(self._node_ready(n) for n in self._nodes if n.running),
            timeout=self._ready_timeout if timeout is None else timeout,
            what="cluster_state:ok with all 16384 slots on every node",
        )

    def close(self) -> None:
        try:
            for node in self._nodes:
                with contextlib.suppress(Exception):
                    node.stop()
        finally:
            for node in self._nodes:
                node.kill()
            _remove_owned_dir(self._dir)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
