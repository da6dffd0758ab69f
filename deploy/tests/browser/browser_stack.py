"""The real processes behind the browser test, each on free loopback ports: nats-server with
JetStream, redis-server, the publisher bridge, two gateway replicas and HAProxy in front of them
(rendered from deploy/haproxy/haproxy.cfg as testkit/src/proxy.rs does), and the backend's
side: tokens minted by deploy/mint-token.py, events published to Redis. Every wait is bounded;
every process gets SIGKILL when the test process dies (parent-death signal) and is stopped at
teardown. It knows nothing about browsers or pages.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[3]
JWT_SECRET = "browser-test-jwt-secret"
TENANT, BRANCH = 1, 1
TABLE_SECRET = "browser-test-table-secret"
START_TIMEOUT = 20.0
# A cold debug build of both binaries takes about 7 minutes on the 2-core reference machine.
BUILD_TIMEOUT = 20 * 60.0
BINARIES = ("gateway", "publisher-bridge")
# NATS users, one per component (when the repository has them: then anonymous clients are refused).
NATS_AUTH_CONF = ROOT / "deploy/nats/auth.conf"
# Sources whose change makes the binaries stale.
SOURCE_DIRS = ("gateway", "publisher-bridge", "wire")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, dict, str]:
    """(status, headers, body); raises OSError when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def answers(url: str, status: int = 200) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == status
    except OSError:
        return False


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05, details=lambda: ""):
    """Polls `condition` until true; fails after `timeout` seconds with `details()`."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{details()}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process goes away (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)


class Proc:
    """One server process, stdout and stderr appended to `log`; startable again (same argv)."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log.parent,
                preexec_fn=_die_with_parent,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"({self.log} unreadable)"
        return f"--- last lines of {self.log}:\n" + "\n".join(text[-lines:])

    def wait_ready(self, probe: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before it was ready\n{self.log_tail()}")
            return probe()

        wait_for(f"{self.name} ready", ready, timeout, details=self.log_tail)

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The exit status; fails if the process still runs after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {timeout:.0f} s later\n{self.log_tail()}") from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        if not self.alive():
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)


class Resp:
    """The smallest Redis client: one connection, RESP2 commands, replies parsed."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args: str | bytes | int):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        out = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        self.sock.sendall(out)
        return self._reply()

    def _reply(self):
        line = self.reader.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def target_directory() -> Path:
    """The workspace's cargo target directory (CARGO_TARGET_DIR and .cargo/config included)."""
    try:
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"browser test: cannot ask cargo for the target directory ({error}); install Rust") from error
    return Path(json.loads(meta.stdout)["target_directory"])


def cargo_binaries() -> dict[str, Path]:
    """The debug binaries from the workspace's target directory, built first when missing or
    older than their sources; or, with BROWSER_TEST_BIN_DIR set, the ones there, as they are."""
    given = os.environ.get("BROWSER_TEST_BIN_DIR")
    if given:
        bins = {name: Path(given) / name for name in BINARIES}
        missing = [str(p) for p in bins.values() if not p.is_file()]
        if missing:
            raise RuntimeError(f"browser test: BROWSER_TEST_BIN_DIR lacks {', '.join(missing)}")
        return bins
    debug = target_directory() / "debug"
    bins = {name: debug / name for name in BINARIES}
    newest_source = max(
        p.stat().st_mtime
        for d in SOURCE_DIRS
        for p in [*(ROOT / d).rglob("*.rs"), ROOT / d / "Cargo.toml"]
        if "target" not in p.parts
    )
    stale = [n for n, p in bins.items() if not p.is_file() or p.stat().st_mtime < newest_source]
    if stale:
        command = ["cargo", "build", "-p", "gateway", "-p", "publisher-bridge", "--bins", "--all-features"]
        print(f"browser test: {', '.join(stale)} missing or older than the sources: {' '.join(command)}", flush=True)
        try:
            subprocess.run(command, cwd=ROOT, timeout=BUILD_TIMEOUT, check=True)
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(f"browser test: `{' '.join(command)}` failed ({error})") from error
    for name, path in bins.items():
        if not path.is_file():
            raise RuntimeError(f"browser test: {path} still missing after the build ({name})")
    return bins


def render_haproxy(port: int, stats_port: int, backends: list[int]) -> str:
    """deploy/haproxy/haproxy.cfg with the placeholders filled and one `server` line per backend
    (the convention at the top of that file; testkit/src/proxy.rs does the same in Rust)."""
    text = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    values = {"FRONTEND_ADDR": "127.0.0.1", "FRONTEND_PORT": port, "STATS_ADDR": "127.0.0.1", "STATS_PORT": stats_port}
    for name, value in values.items():
        text = re.sub(r"\$\{" + name + r"(-[^}]*)?\}", str(value), text)
    assert "${" not in text, "a placeholder of haproxy.cfg has no value"
    out, lines = [], iter(text.splitlines())
    for line in lines:
        out.append(line)
        if line.strip() != "# @backends-begin":
            continue
        block = []
        for inner in lines:
            if inner.strip() == "# @backends-end":
                break
            block.append(inner)
        template = next(b for b in block if b.strip().startswith("server ")).split()
        indent = line[: len(line) - len(line.lstrip())]
        for i, backend in enumerate(backends, 1):
            out.append(indent + " ".join(["server", f"gw{i}", f"127.0.0.1:{backend}", *template[3:]]))
        out.append(indent + "# @backends-end")
    return "\n".join(out) + "\n"


def haproxy_statuses(stats_port: int) -> list[str]:
    """The status of each server of backend `gateways`, in configuration order."""
    status, _, body = http_get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2)
    rows = body.splitlines()
    header = rows[0].removeprefix("# ").split(",")
    px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
    fields = [r.split(",") for r in rows[1:]]
    return [f[st] for f in fields if f[px] == "gateways" and f[sv] not in ("BACKEND", "FRONTEND")]


def base_env() -> dict[str, str]:
    """What every server inherits: nothing of the caller's environment but the basics."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}


class Gateway:
    """One gateway replica on a fixed port, so it can be restarted behind the same HAProxy line."""

    def __init__(self, binary: Path, index: int, port: int, env: dict[str, str], logs: Path):
        self.index, self.port = index, port
        env = {**env, "GATEWAY_LISTEN_ADDR": f"127.0.0.1:{port}", "GATEWAY_INSTANCE_ID": f"gw-{index}"}
        self.proc = Proc(f"gateway gw-{index}", [str(binary)], logs / f"gateway-{index}.log", env)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self.proc.start().wait_ready(lambda: answers(self.url("/readyz")))

    def connections(self) -> int:
        """`total_connections` of /ws/health; -1 when the replica does not answer."""
        try:
            status, _, body = http_get(self.url("/ws/health"), timeout=2)
        except OSError:
            return -1
        return json.loads(body)["total_connections"] if status == 200 else -1


class Stack:
    """NATS, Redis, bridge, two gateways and HAProxy; `allowed_origins` go to ALLOWED_ORIGINS."""

    def __init__(self, logs: Path, allowed_origins: list[str], gateway_env: dict[str, str]):
        self.logs = logs
        self.allowed_origins = allowed_origins
        self.gateway_env = gateway_env
        self.procs: list[Proc] = []
        self.gateways: list[Gateway] = []
        self.redis: Resp | None = None

    def start(self) -> "Stack":
        bins = cargo_binaries()
        nats_bin = Path(os.environ.get("NATS_SERVER_BIN", ROOT / ".tools/bin/nats-server"))
        if not nats_bin.is_file():
            raise RuntimeError(f"browser test: nats-server not found at {nats_bin}: run deploy/install-deps.sh")
        nats_port, nats_monitor, redis_port, bridge_port, gw1, gw2, lb_port, lb_stats = free_ports(8)
        store = self.logs / "nats-store"
        nats_argv = [str(nats_bin), "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(nats_monitor), "-js", "-sd", str(store)]
        nats_env, bridge_login, gateway_login = base_env(), {}, {}
        if NATS_AUTH_CONF.is_file():
            # As deploy/stack.sh runs it: the project's NATS users, passwords from nats-server's
            # environment, each component logged in as its own user.
            passwords = {user: secrets.token_hex(16) for user in ("OPERATOR", "BRIDGE", "GATEWAY", "LOADTEST")}
            nats_env.update({f"NATS_{user}_PASSWORD": password for user, password in passwords.items()})
            nats_argv[1:1] = ["-c", str(NATS_AUTH_CONF)]
            bridge_login = {"NATS_USER": "bridge", "NATS_PASSWORD": passwords["BRIDGE"]}
            gateway_login = {"NATS_USER": "gateway", "NATS_PASSWORD": passwords["GATEWAY"]}
        nats = self._spawn("nats-server", nats_argv, nats_env)
        redis = self._spawn(
            "redis-server",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", str(self.logs),
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
        )
        nats.wait_ready(lambda: answers(f"http://127.0.0.1:{nats_monitor}/healthz?js-enabled-only=true"))
        redis.wait_ready(lambda: _redis_pong(redis_port))
        self.redis = Resp(redis_port)
        nats_url, redis_url = f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}"

        bridge_env = {
            **base_env(),
            "REDIS_URL": redis_url,
            "NATS_URL": nats_url,
            "BRIDGE_LISTEN_ADDR": f"127.0.0.1:{bridge_port}",
            "BRIDGE_INSTANCE_ID": "bridge-browser-test",
            "BRIDGE_WORKER_THREADS": "1",
            **bridge_login,
        }
        bridge = self._spawn("publisher-bridge", [str(bins["publisher-bridge"])], bridge_env)
        bridge.wait_ready(lambda: answers(f"http://127.0.0.1:{bridge_port}/readyz"))

        env = {
            **base_env(),
            "JWT_SECRET": JWT_SECRET,
            "TABLE_TOKEN_SECRET": TABLE_SECRET,
            "ALLOWED_ORIGINS": ",".join(self.allowed_origins),
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "GATEWAY_WORKER_THREADS": "1",
            **gateway_login,
            **self.gateway_env,
        }
        for i, port in enumerate((gw1, gw2), 1):
            gateway = Gateway(bins["gateway"], i, port, env, self.logs)
            self.procs.append(gateway.proc)
            self.gateways.append(gateway)
            gateway.start()

        config = self.logs / "haproxy.cfg"
        config.write_text(render_haproxy(lb_port, lb_stats, [gw1, gw2]))
        self.lb_port, self.lb_stats = lb_port, lb_stats
        self.haproxy = self._spawn("haproxy", ["haproxy", "-f", str(config), "-db"])
        self.wait_haproxy(["UP", "UP"])
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.logs / f"{name}.log", env if env is not None else base_env()).start()
        self.procs.append(proc)
        return proc

    def wait_haproxy(self, statuses: list[str], timeout: float = START_TIMEOUT) -> None:
        seen: list[list[str]] = [[]]

        def matches() -> bool:
            if not self.haproxy.alive():
                raise AssertionError(f"haproxy exited\n{self.haproxy.log_tail()}")
            try:
                seen[0] = haproxy_statuses(self.lb_stats)
            except (OSError, ValueError, IndexError):
                return False
            return seen[0] == statuses

        wait_for(f"HAProxy reports {statuses}", matches, timeout, interval=0.1, details=lambda: f"last seen {seen[0]}")

    def restore_gateways(self) -> None:
        """Every gateway running again and UP in HAProxy (after a test stopped one)."""
        for gateway in self.gateways:
            if not gateway.proc.alive():
                gateway.start()
        self.wait_haproxy(["UP"] * len(self.gateways))

    @property
    def lb(self) -> str:
        """HAProxy's frontend, host:port."""
        return f"127.0.0.1:{self.lb_port}"

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.close()
        for proc in reversed(self.procs):
            proc.stop()


def _redis_pong(port: int) -> bool:
    try:
        client = Resp(port)
    except OSError:
        return False
    try:
        return client("PING") == "PONG"
    except (OSError, RuntimeError):
        return False
    finally:
        client.close()


def mint(sub: int, roles: str = "WAITER", secret: str = JWT_SECRET) -> str:
    """A staff token exactly as the backend issues it: deploy/mint-token.py."""
    env = {"PATH": os.environ.get("PATH", ""), "JWT_SECRET": secret}
    out = subprocess.run(
        ["python3", str(ROOT / "deploy/mint-token.py"), "staff", "--sub", str(sub), "--tenant", str(TENANT),
         "--branches", str(BRANCH), "--roles", roles],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    return out.stdout.strip()


class Backend:
    """Publishes events the backend's way: PUBLISH on branch:{b}:waiters, or XADD to
    events:critical (field `data`); the bridge carries both into JetStream. Each event carries a
    unique probe id in `entity` so the test can count it."""

    def __init__(self, stack: Stack, run: str):
        self.stack, self.run, self.count = stack, run, 0
        self.published: list[dict] = []

    def publish(self, via: str = "pubsub") -> str:
        self.count += 1
        probe = f"{self.run}-{self.count}"
        event = {
            "type": "ROUND_PENDING",
            "tenant_id": TENANT,
            "branch_id": BRANCH,
            "table_id": 3,
            "session_id": None,
            "sector_id": None,
            "entity": {"round_id": self.count, "probe": probe},
            "actor": {"user_id": 9, "role": "DINER"},
            "ts": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "v": 1,
        }
        data = json.dumps(event, separators=(",", ":"))
        redis = self.stack.redis
        if via == "pubsub":
            receivers = redis("PUBLISH", f"branch:{BRANCH}:waiters", data)
            assert receivers >= 1, "nobody subscribed to the backend's channel: is the bridge up?"
        elif via == "stream":
            redis("XADD", "events:critical", "*", "data", data)
        elif via == "both":
            # The backend's habit: one event on several paths; it must arrive once.
            redis("PUBLISH", f"branch:{BRANCH}:waiters", data)
            redis("XADD", "events:critical", "*", "data", data)
        else:
            raise ValueError(via)
        self.published.append({"probe": probe, "at": time.time(), "via": via})
        return probe
