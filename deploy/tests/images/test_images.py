"""The container images as operators run them: built with podman from the real Dockerfiles
(deploy/docker/*.Dockerfile) on deploy/images/base.sh's local base images, then the bridge and two
gateways run as containers (host network) exactly as hardened deployments run them: the image's
own user, `--read-only`, `--cap-drop ALL`, `--security-opt no-new-privileges`, with nats-server (the
project's NATS users, deploy/nats/auth.conf) and redis-server on free loopback ports of the host.

It checks that every container runs as uid/gid 65532 with no capabilities and no-new-privileges
(the kernel's view, /proc/<pid>/status), answers /livez and /readyz, that an event the backend
PUBLISHes on a branch channel in Redis reaches a WebSocket client of each containerized gateway
(bridge -> JetStream -> gateway), and that `podman stop -t 30` (SIGTERM) drains each container:
the connected client gets 1012, the log has the drain lines, the exit code is 0.

Which binaries: by default the images are built with `--target prebuilt` (deploy/images/build.sh)
from target/release when it holds both binaries newer than the sources, else target/debug (built
first when missing or stale, as the browser test does: after nextest it is up to date), so the
suite never runs a cold release build. IMAGE_TEST_BIN_DIR=<dir> takes the binaries from <dir>;
IMAGE_TEST_IMAGES=<tag> builds nothing and tests realtime-gateway/{gateway,publisher-bridge}:<tag>
as they are (for example `local` after `deploy/images/build.sh --full`). The end of the run
prints which binaries or images were used, the image sizes and each container's start-to-ready
time.

Skipped only when podman cannot run at all here (not installed, `podman info` fails, not root);
everything after that is a failure. Run alone:
  PYTHONPATH=.tools/chart-py:.tools/browser-py python3 -m pytest -q -p no:cacheprovider deploy/tests/images
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "deploy/tests/browser"))
from browser_stack import (  # noqa: E402
    NATS_AUTH_CONF,
    SOURCE_DIRS,
    Proc,
    Resp,
    _redis_pong,
    answers,
    base_env,
    cargo_binaries,
    free_ports,
    http_get,
    mint,
    target_directory,
    wait_for,
)

TENANT, BRANCH = 1, 1
ORIGIN = "http://127.0.0.1:5173"
TABLE_SECRET = "image-test-table-secret"
NONROOT = 65532
TAG = "imagetest"  # realtime-gateway/<name>:imagetest, so the user's :local images stay as they are
START_TIMEOUT = 60.0
DRAIN_WINDOW, SHUTDOWN_TIMEOUT, STOP_TIMEOUT = "2s", "10s", 30
HARDENING = ["--network", "host", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
LABEL = "realtime-gateway.image-test"


def podman_env() -> dict[str, str]:
    """The caller's environment plus CONTAINERS_CONF from deploy/images/env.sh (runc, cgroupfs,
    ulimits within this host's hard limits, stop timeout)."""
    out = subprocess.run(
        ["bash", "-c", '. deploy/images/env.sh && printf %s "$CONTAINERS_CONF"'],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )
    return {**os.environ, "CONTAINERS_CONF": out.stdout}


ENV = podman_env()


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def podman_unusable() -> str | None:
    """Why podman cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (deploy/install-deps.sh installs it)"
    if os.geteuid() != 0:
        return "needs root: the base images are debootstrapped and the containers run with rootful podman"
    try:
        info = subprocess.run(["podman", "info"], env=ENV, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"`podman info` failed: {error}"
    if info.returncode != 0:
        return f"`podman info` failed: {info.stderr.strip()[-500:]}"
    return None


def newest_source() -> float:
    return max(
        p.stat().st_mtime
        for d in SOURCE_DIRS
        for p in [*(ROOT / d).rglob("*.rs"), ROOT / d / "Cargo.toml"]
        if "target" not in p.parts
    )


def binaries_dir() -> tuple[Path, str]:
    """Where the prebuilt binaries come from, and how it was chosen."""
    given = os.environ.get("IMAGE_TEST_BIN_DIR")
    if given:
        return Path(given).resolve(), "IMAGE_TEST_BIN_DIR"
    release = target_directory() / "release"
    names = ("gateway", "publisher-bridge")
    if all((release / n).is_file() and (release / n).stat().st_mtime >= newest_source() for n in names):
        return release, "release build, newer than the sources"
    debug = target_directory() / "debug"
    stale = [n for n in names if not (debug / n).is_file() or (debug / n).stat().st_mtime < newest_source()]
    bins = cargo_binaries()  # target/debug, built first when missing or stale
    how = f"rebuilt first, {', '.join(stale)} older than the sources" if stale else "as the Rust tests left them"
    return bins["gateway"].parent, f"debug build, {how}"


def image_size(tag: str) -> str:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return f"{size / 1e6:.1f} MB"


class Ws:
    """The smallest WebSocket client (RFC 6455): handshake, masked text frames, reading frames."""

    def __init__(self, port: int, path: str, origin: str = ORIGIN, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"handshake: connection closed after {self.buffer!r}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split(" ")[1] == "101", f"handshake refused: {lines[0]}"
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        assert headers.get("sec-websocket-accept") == accept, headers

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack("!Q", n)
        )
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def frame(self, timeout: float) -> tuple[int, bytes]:
        """The next data or close frame (pings are answered, pongs skipped)."""
        self.sock.settimeout(timeout)
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode != 0xA:
                return opcode, payload

    def wait_text(self, what: str, condition, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what}: not within {timeout:.0f} s; received {seen}")
            try:
                opcode, payload = self.frame(left)
            except socket.timeout:
                continue
            if opcode == 0x8:
                raise AssertionError(f"{what}: closed instead ({self.close_of(payload)}); received {seen}")
            text = payload.decode()
            seen.append(text[:200])
            if condition(text):
                return text

    def wait_close(self, timeout: float) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.frame(max(0.1, deadline - time.monotonic()))
            if opcode == 0x8:
                return self.close_of(payload)
            if time.monotonic() > deadline:
                raise AssertionError("no close frame")

    @staticmethod
    def close_of(payload: bytes) -> tuple[int, str]:
        return (struct.unpack("!H", payload[:2])[0], payload[2:].decode(errors="replace")) if len(payload) >= 2 else (1005, "")

    def close(self) -> None:
        self.sock.close()


class Container:
    """One detached container of the test, its name labelled for cleanup."""

    def __init__(self, name: str, image: str, env: dict[str, str], ready_url: str):
        self.name, self.image, self.env, self.ready_url = f"rtgw-imagetest-{os.getpid()}-{name}", image, env, ready_url
        self.ready_after: dict[str, float] = {}

    def run(self) -> "Container":
        args = ["run", "-d", "--name", self.name, "--label", f"{LABEL}={os.getpid()}", *HARDENING]
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        started = time.monotonic()
        podman(*args, self.image)
        wait_for(f"{self.name} ready", lambda: self._check_running() and answers(self.ready_url), START_TIMEOUT,
                 interval=0.02, details=self.logs)
        ready, ready_wall = time.monotonic(), datetime.now(timezone.utc)
        self.ready_after["podman run"] = ready - started
        # StartedAt (RFC 3339, nanoseconds, a zone): when runc started the process.
        stamp = re.fullmatch(r"(\S+T[\d:]+)(\.\d+)?(Z|[+-]\d\d:\d\d)", self.inspect()["State"]["StartedAt"])
        if stamp:
            date, fraction, zone = stamp.groups()
            started_at = datetime.fromisoformat(date + (fraction or ".0")[:7].ljust(7, "0") + ("+00:00" if zone == "Z" else zone))
            self.ready_after["process start"] = (ready_wall - started_at).total_seconds()
        return self

    def _check_running(self) -> bool:
        state = self.inspect()["State"]
        if state["Status"] not in ("running", "created", "configured"):
            raise AssertionError(f"{self.name} is {state['Status']} (exit {state['ExitCode']}) before it was ready\n{self.logs()}")
        return True

    def inspect(self) -> dict:
        return json.loads(podman("inspect", "--type", "container", self.name).stdout)[0]

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return f"--- podman logs {self.name}:\n" + "\n".join((done.stdout + done.stderr).splitlines()[-40:])

    def proc_status(self) -> dict[str, str]:
        pid = self.inspect()["State"]["Pid"]
        assert pid > 0, f"{self.name}: no pid"
        text = Path(f"/proc/{pid}/status").read_text()
        return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}

    def stop(self) -> tuple[int, float]:
        """`podman stop -t 30` (SIGTERM, then SIGKILL after 30 s): (exit code, seconds it took)."""
        started = time.monotonic()
        podman("stop", "-t", str(STOP_TIMEOUT), self.name, timeout=STOP_TIMEOUT + 30)
        return self.inspect()["State"]["ExitCode"], time.monotonic() - started

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def remove_leftovers() -> None:
    """Containers of earlier runs whose test process is gone."""
    listed = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}} {{.Labels}}", check=False).stdout
    for line in listed.splitlines():
        name = line.split()[0]
        pid = name.split("-")[2] if name.count("-") >= 3 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            podman("rm", "-f", "-t", "0", name, check=False)


class Stack:
    def __init__(self, logs: Path, report: list[str]):
        self.report = report
        self.logs = logs
        self.procs: list[Proc] = []
        self.containers: list[Container] = []

    def images(self) -> dict[str, str]:
        given = os.environ.get("IMAGE_TEST_IMAGES")
        if given:
            images = {n: f"realtime-gateway/{n}:{given}" for n in ("gateway", "publisher-bridge")}
            for image in images.values():
                assert podman("image", "exists", image, check=False).returncode == 0, f"{image} missing (IMAGE_TEST_IMAGES)"
            self.report.append(f"images as given (IMAGE_TEST_IMAGES={given}): {', '.join(images.values())}")
        else:
            directory, why = binaries_dir()
            started = time.monotonic()
            done = subprocess.run(
                ["deploy/images/build.sh", "--prebuilt", str(directory)], cwd=ROOT, env={**ENV, "TAG_SUFFIX": TAG},
                capture_output=True, text=True, timeout=30 * 60,
            )
            assert done.returncode == 0, f"deploy/images/build.sh failed ({done.returncode})\n{done.stdout}{done.stderr}"
            images = {n: f"realtime-gateway/{n}:{TAG}" for n in ("gateway", "publisher-bridge")}
            self.report.append(f"binaries from {directory} ({why}); base images and both image builds {time.monotonic() - started:.0f} s")
        for name, image in images.items():
            self.report.append(f"{image}: {image_size(image)}")
        return images

    def start(self) -> "Stack":
        remove_leftovers()
        images = self.images()
        nats_bin = Path(os.environ.get("NATS_SERVER_BIN", ROOT / ".tools/bin/nats-server"))
        assert nats_bin.is_file(), f"nats-server not found at {nats_bin}: run deploy/install-deps.sh"
        assert NATS_AUTH_CONF.is_file()
        nats_port, nats_monitor, redis_port, bridge_port, gw1, gw2 = free_ports(6)
        passwords = {user: secrets.token_hex(16) for user in ("OPERATOR", "BRIDGE", "GATEWAY", "LOADTEST")}
        nats_env = {**base_env(), **{f"NATS_{u}_PASSWORD": p for u, p in passwords.items()}}
        nats = self._spawn("nats-server", [str(nats_bin), "-c", str(NATS_AUTH_CONF), "-a", "127.0.0.1", "-p", str(nats_port),
                                           "-m", str(nats_monitor), "-js", "-sd", str(self.logs / "nats-store")], nats_env)
        redis = self._spawn("redis-server", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", str(self.logs),
                                             "--save", "", "--appendonly", "no", "--daemonize", "no"])
        nats.wait_ready(lambda: answers(f"http://127.0.0.1:{nats_monitor}/healthz?js-enabled-only=true"))
        redis.wait_ready(lambda: _redis_pong(redis_port))
        self.redis = Resp(redis_port)
        nats_url, redis_url = f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}"

        self.bridge = Container("bridge", images["publisher-bridge"], {
            "REDIS_URL": redis_url, "NATS_URL": nats_url, "NATS_USER": "bridge", "NATS_PASSWORD": passwords["BRIDGE"],
            "BRIDGE_LISTEN_ADDR": f"127.0.0.1:{bridge_port}", "BRIDGE_INSTANCE_ID": "bridge-image-test",
            "BRIDGE_WORKER_THREADS": "1", "LOG_FORMAT": "text",
        }, f"http://127.0.0.1:{bridge_port}/readyz")
        self.bridge_port = bridge_port
        self.containers.append(self.bridge)
        self.bridge.run()

        self.gateways: list[tuple[Container, int]] = []
        for i, port in enumerate((gw1, gw2), 1):
            gateway = Container(f"gateway-{i}", images["gateway"], {
                "JWT_SECRET": "browser-test-jwt-secret", "TABLE_TOKEN_SECRET": TABLE_SECRET, "ALLOWED_ORIGINS": ORIGIN,
                "NATS_URL": nats_url, "NATS_USER": "gateway", "NATS_PASSWORD": passwords["GATEWAY"], "REDIS_URL": redis_url,
                "GATEWAY_LISTEN_ADDR": f"127.0.0.1:{port}", "GATEWAY_INSTANCE_ID": f"gateway-{i}", "GATEWAY_WORKER_THREADS": "1",
                "GATEWAY_DRAIN_WINDOW": DRAIN_WINDOW, "GATEWAY_SHUTDOWN_TIMEOUT": SHUTDOWN_TIMEOUT,
            }, f"http://127.0.0.1:{port}/readyz")
            self.containers.append(gateway)
            gateway.run()
            self.gateways.append((gateway, port))
        for container in self.containers:
            timings = ", ".join(f"{what} -> /readyz 200 {secs:.2f} s" for what, secs in container.ready_after.items())
            self.report.append(f"{container.name.split('-', 3)[-1]} ({container.image}): {timings}")
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.logs / f"{name}.log", env if env is not None else base_env()).start()
        self.procs.append(proc)
        return proc

    def publish(self, probe: str) -> None:
        """An event as the backend publishes it: PUBLISH on branch:<b>:waiters."""
        event = {
            "type": "ROUND_PENDING", "tenant_id": TENANT, "branch_id": BRANCH, "table_id": 3, "session_id": None,
            "sector_id": None, "entity": {"round_id": 1, "probe": probe}, "actor": {"user_id": 9, "role": "DINER"},
            "ts": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "v": 1,
        }
        receivers = self.redis("PUBLISH", f"branch:{BRANCH}:waiters", json.dumps(event, separators=(",", ":")))
        assert receivers >= 1, "nobody subscribed to the backend's channel: is the bridge container up?"

    def stop(self) -> None:
        for container in self.containers:
            container.remove()
        if getattr(self, "redis", None) is not None:
            self.redis.close()
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, image_report):
    reason = podman_unusable()
    if reason:
        pytest.skip(f"podman cannot run here: {reason}")
    running = Stack(tmp_path_factory.mktemp("image-test"), image_report)
    try:
        yield running.start()
    finally:
        running.stop()


def test_containers_run_as_nonroot_read_only_without_capabilities(stack):
    for container in stack.containers:
        config = container.inspect()
        assert config["Config"]["User"] == f"{NONROOT}:{NONROOT}", f"{container.name}: image user {config['Config']['User']!r}"
        assert config["HostConfig"]["ReadonlyRootfs"] is True
        status = container.proc_status()
        # Real, effective, saved and filesystem ids, as the kernel sees the container's process.
        assert status["Uid"].split() == [str(NONROOT)] * 4, f"{container.name}: Uid {status['Uid']}"
        assert status["Gid"].split() == [str(NONROOT)] * 4, f"{container.name}: Gid {status['Gid']}"
        for caps in ("CapEff", "CapPrm", "CapBnd"):
            assert int(status[caps], 16) == 0, f"{container.name}: {caps} {status[caps]}"
        assert status["NoNewPrivs"] == "1", f"{container.name}: NoNewPrivs {status['NoNewPrivs']}"


def test_probes_answer_through_each_container(stack):
    assert http_get(f"http://127.0.0.1:{stack.bridge_port}/livez")[0] == 200
    assert http_get(f"http://127.0.0.1:{stack.bridge_port}/readyz")[0] == 200
    for gateway, port in stack.gateways:
        for path in ("/livez", "/readyz"):
            status, _, body = http_get(f"http://127.0.0.1:{port}{path}")
            assert status == 200, f"{gateway.name} {path}: {status} {body}\n{gateway.logs()}"


def test_backend_event_reaches_a_client_of_each_containerized_gateway(stack):
    token = mint(7)
    clients = [Ws(port, f"/ws/waiter?token={token}") for _, port in stack.gateways]
    try:
        probe = f"image-test-{secrets.token_hex(4)}"
        stack.publish(probe)
        for client, (gateway, _) in zip(clients, stack.gateways):
            text = client.wait_text(f"event {probe} through {gateway.name}", lambda t: probe in t)
            event = json.loads(text)
            assert event["type"] == "ROUND_PENDING" and event["entity"]["probe"] == probe
    finally:
        for client in clients:
            client.close()


def test_sigterm_drains_each_container_and_exits_zero(stack):
    token = mint(8)
    for gateway, port in stack.gateways:
        client = Ws(port, f"/ws/waiter?token={token}")
        try:
            code, took = gateway.stop()
            logs = gateway.logs()
            assert code == 0, f"{gateway.name}: exit {code}\n{logs}"
            assert took < STOP_TIMEOUT, f"{gateway.name}: `podman stop` took {took:.1f} s: killed, not drained\n{logs}"
            assert client.wait_close(5) == (1012, "Service restart"), logs
            for line in ("SIGTERM: draining", "closing connections with 1012", "NATS drained"):
                assert line in logs, f"{gateway.name}: no {line!r} in the log\n{logs}"
            stack.report.append(f"{gateway.name.split('-', 3)[-1]}: podman stop -t {STOP_TIMEOUT} -> exit 0 after {took:.1f} s, client closed 1012")
        finally:
            client.close()
    code, took = stack.bridge.stop()
    logs = stack.bridge.logs()
    assert code == 0, f"bridge: exit {code}\n{logs}"
    assert took < STOP_TIMEOUT, f"bridge: `podman stop` took {took:.1f} s\n{logs}"
    assert "shutting down" in logs and "SIGTERM" in logs, logs
    stack.report.append(f"bridge: podman stop -t {STOP_TIMEOUT} -> exit 0 after {took:.1f} s")
