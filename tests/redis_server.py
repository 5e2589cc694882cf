"""Real `redis-server`s on free loopback ports: one shared by a whole test session, and private
ones for tests that stop Redis.

Tests may kill a private one (`kill()`, SIGKILL) and start it again on the same port and data
directory (`start()`), to check what survives a crash, or freeze it (`pause()`, SIGSTOP: the
kernel still accepts connections but nothing answers) and thaw it (`resume()`, SIGCONT). AOF
(`appendfsync always` here, so a test's acknowledged writes are on disk when it kills the
server) is on unless `aof=False`.

The shared one (`SharedRedisServer`) is handed from test to test, emptied in between; stopping it
in any of those ways raises, so a test that needs to stop Redis takes a private server instead.
`starts` counts the servers started in this process (a restart counts too).

`RedisClusterServer` is a local three-master Redis Cluster, shared by a test session too.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

starts = 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, data_dir: Path, *, aof: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.binary = binary
        self.data_dir = data_dir
        self.aof = aof
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        global starts
        starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its port and its data."""
        assert self.proc is not None and self.proc.poll() is None, "redis-server is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        assert self.proc is not None and self.proc.poll() is None, "redis-server is not running"
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server handles SIGTERM only then
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


class SharedServerError(RuntimeError):
    """A test tried to stop, freeze or restart the session's shared redis-server."""


class SharedRedisServer(RedisServer):
    """The test session's one redis-server, without AOF (no test of it kills it).

    `kill`, `pause`, `resume`, `stop`, `start` and `restart` raise `SharedServerError`: other
    tests still need this server. The session starts and stops it with `launch` and `shut_down`.
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, aof=False)
        self.recoveries = 0

    def launch(self) -> None:
        super().start()

    def shut_down(self) -> None:
        super().stop()

    def answers(self, timeout: float = 2.0) -> bool:
        """True if the server replies to PING within `timeout` seconds."""
        # No retries: redis-py's default ones would take seconds to report a dead server.
        client = redis.Redis(
            port=self.port,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def fresh(self) -> None:
        """Empty every database and the script cache, as a newly started server has them.
        A server that does not answer PING (it died, or was frozen behind our back) is killed
        and started again first, on the same port; `recoveries` counts those restarts."""
        if not self.answers():
            self.recoveries += 1
            super().kill()
            super().start()
        client = redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=10)
        try:
            client.flushall(asynchronous=False)
            client.script_flush("SYNC")
        finally:
            client.close()

    def _refuse(self, action: str) -> None:
        raise SharedServerError(
            f"cannot {action} the shared redis-server: other tests use it; "
            "take the `own_redis_server` fixture for a server of your own"
        )

    def kill(self) -> None:
        self._refuse("kill")

    def pause(self) -> None:
        self._refuse("pause")

    def resume(self) -> None:
        self._refuse("resume")

    def stop(self) -> None:
        self._refuse("stop")

    def start(self) -> None:
        self._refuse("start")

    def restart(self) -> None:
        self._refuse("restart")


class RedisClusterServer:
    """A real three-master Redis Cluster on loopback (no replicas, no persistence), for tests
    that check cascade's keys, scripts and transactions against a cluster's slot rules.

    `url` is the `redis+cluster://` form `app.redis_client.redis_client` accepts. `fresh()`
    empties every master and its script cache, as `SharedRedisServer.fresh` does.
    """

    def __init__(self, data_dir: Path, *, masters: int = 3) -> None:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (make test installs them)")
        self.binary = binary
        self.cli = cli
        self.data_dir = data_dir
        self.ports = [_cluster_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def launch(self) -> None:
        global starts
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            starts += 1
            argv = [
                self.binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "no",
                "--save",
                "",
                "--logfile",
                str(self.data_dir / f"redis-{port}.log"),
            ]
            self.procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in self.ports:
            self._wait(lambda c: bool(c.ping()), port, "did not start")
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        for port in self.ports:
            self._wait(_cluster_ok, port, "did not reach cluster_state:ok")

    def _wait(self, ready: Callable[[redis.Redis], bool], port: int, what: str) -> None:
        deadline = time.monotonic() + 30
        client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=2)
        try:
            while True:
                try:
                    if ready(client):
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"redis cluster node {port} {what}")
                time.sleep(0.05)
        finally:
            client.close()

    def fresh(self) -> None:
        for port in self.ports:
            client = redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=10)
            try:
                client.flushall(asynchronous=False)
                client.script_flush("SYNC")
            finally:
                client.close()

    def shut_down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (so P is at most 55535)."""
    while True:
        port = random.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text
