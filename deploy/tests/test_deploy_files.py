"""The files of deploy/ that no test can run here (no Docker engine on this machine): the compose
file parses and wires the cluster as documented, the Dockerfiles have the required shape, and the
HAProxy and nginx configurations pass `haproxy -c` and `nginx -t` exactly as compose and the
fixture use them. The proxies themselves run in gateway/tests/proxies.rs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
HEARTBEAT_S = 60  # WS_HEARTBEAT_TIMEOUT default (gateway/src/config.rs)


def rust_env_names(*relative: str) -> set[str]:
    names: set[str] = set()
    for path in relative:
        names |= set(re.findall(r'pub const [A-Z0-9_]+: &str = "([A-Z0-9_]+)";', (ROOT / path).read_text()))
    return names


def seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", text.strip()).groups()
    return float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def by_prefix(prefix: str) -> dict[str, dict]:
    return {name: svc for name, svc in SERVICES.items() if name.startswith(prefix)}


def test_compose_runs_the_documented_cluster():
    assert sorted(by_prefix("nats-")) == ["nats-1", "nats-2", "nats-3"]
    assert sorted(by_prefix("bridge-")) == ["bridge-1", "bridge-2"]
    assert sorted(by_prefix("gateway-")) == ["gateway-1", "gateway-2", "gateway-3"]
    assert {"redis", "haproxy"} <= SERVICES.keys()


def test_nats_nodes_form_one_jetstream_cluster():
    routes = None
    for name, svc in by_prefix("nats-").items():
        args = svc["command"]
        flag = lambda f: args[args.index(f) + 1]
        assert "--jetstream" in args and flag("--name") == name
        assert flag("--cluster_name") == "realtime"
        routes = routes or flag("--routes")
        assert flag("--routes") == routes
    assert sorted(re.findall(r"nats://(nats-\d):6222", routes)) == sorted(by_prefix("nats-"))


def test_services_read_only_variables_the_binaries_know():
    gateway_reads = rust_env_names("gateway/src/config/vars.rs", "wire/src/natsconn.rs", "wire/src/otel.rs", "wire/src/redisconn.rs")
    bridge_reads = rust_env_names("publisher-bridge/src/config.rs", "wire/src/natsconn.rs", "wire/src/otel.rs", "wire/src/redisconn.rs")
    for name, svc in by_prefix("gateway-").items():
        env = svc["environment"]
        assert set(env) <= gateway_reads, f"{name}: {set(env) - gateway_reads}"
        assert env["GATEWAY_INSTANCE_ID"] == name
        assert seconds(svc["stop_grace_period"]) > seconds(env["GATEWAY_SHUTDOWN_TIMEOUT"]) > seconds(env["GATEWAY_DRAIN_WINDOW"])
        assert svc["build"]["dockerfile"] == "deploy/docker/gateway.Dockerfile"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    for name, svc in by_prefix("bridge-").items():
        env = svc["environment"]
        assert set(env) <= bridge_reads, f"{name}: {set(env) - bridge_reads}"
        assert env["BRIDGE_EVENTS_REPLICAS"] == "3"
        assert svc["build"]["dockerfile"] == "deploy/docker/publisher-bridge.Dockerfile"
    for svc in list(by_prefix("gateway-").values()) + list(by_prefix("bridge-").values()):
        nats = svc["environment"]["NATS_URL"].split(",")
        assert sorted(re.sub(r"nats://(.*):4222", r"\1", u) for u in nats) == sorted(by_prefix("nats-"))
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379"


def haproxy_placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_]+)(?:-[^}]*)?\}", text))


def test_haproxy_in_compose_uses_the_deploy_config_and_its_replicas():
    haproxy = SERVICES["haproxy"]
    (mount,) = haproxy["volumes"]
    source, target, mode = mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "haproxy" / "haproxy.cfg"
    assert target == "/usr/local/etc/haproxy/haproxy.cfg" and mode == "ro"
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert haproxy_placeholders(config) == set(haproxy["environment"])
    backends = re.findall(r"^\s*server (\S+) (\S+):(\d+)", config, re.M)
    assert sorted(host for _, host, _ in backends) == sorted(by_prefix("gateway-"))
    for _, host, port in backends:
        assert SERVICES[host]["environment"]["GATEWAY_LISTEN_ADDR"] == f"0.0.0.0:{port}"
    frontend = haproxy["environment"]["FRONTEND_PORT"]
    assert f"8080:{frontend}" in haproxy["ports"]


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which(cmd[0]) or shutil.which(cmd[0], path="/usr/sbin:/sbin")
    assert binary, f"{cmd[0]} not installed: run deploy/install-deps.sh"
    return subprocess.run([binary, *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_haproxy_config_is_valid_as_compose_runs_it():
    env = dict(os.environ) | SERVICES["haproxy"]["environment"]
    done = run(["haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")], env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_config_keeps_websockets_and_follows_readiness():
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    directive = lambda pattern: re.search(rf"^\s*{pattern}\s+(\S+)", config, re.M).group(1)
    assert seconds(directive("timeout tunnel")) > HEARTBEAT_S
    assert directive("balance") == "leastconn"
    assert re.search(r"^\s*http-check send meth GET uri /readyz\b", config, re.M)
    assert re.search(r"^\s*http-check expect status 200$", config, re.M)
    live = "\n".join(line.split("#")[0] for line in config.splitlines())
    assert "on-marked-down" not in live, "the gateway closes its own sessions while draining"


def test_nginx_config_is_valid_once_rendered(tmp_path):
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert set(re.findall(r"\$\{([A-Z_]+)\}", text)) == {"FRONTEND_ADDR", "FRONTEND_PORT"}
    rendered = text.replace("${FRONTEND_ADDR}", "127.0.0.1").replace("${FRONTEND_PORT}", "18080")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(rendered)
    done = run(["nginx", "-t", "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")])
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ["proxy_read_timeout", "proxy_send_timeout"]:
        assert seconds(re.search(rf"^\s*{name}\s+(\S+);", text, re.M).group(1)) > HEARTBEAT_S
    assert re.search(r"^\s*least_conn;", text, re.M)
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", text)


@pytest.mark.parametrize("binary, port", [("gateway", 8001), ("publisher-bridge", 9100)])
def test_dockerfiles_build_small_non_root_images(binary, port):
    text = (DEPLOY / "docker" / f"{binary}.Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    # runtime (distroless, user, entrypoint), prebuilt (runtime + a binary from the context),
    # builder (cargo), and the default target: runtime + the builder's binary.
    assert [alias for _, alias in stages] == ["runtime", "prebuilt", "builder", ""], stages
    assert stages[0][0] == "gcr.io/distroless/cc-debian12:nonroot"
    assert stages[1][0] == "runtime" and stages[3][0] == "runtime"
    assert stages[2][0].startswith("rust:") and stages[2][0].endswith("-slim-bookworm")
    runtime, prebuilt, builder, final = re.split(r"^FROM .*$", text, flags=re.M)[1:]
    assert f"cargo build --release --locked -p {binary} --bin {binary}" in builder
    assert "--mount=type=cache,target=/usr/local/cargo/registry" in builder
    assert re.search(rf"^COPY {binary} /usr/local/bin/{binary}$", prebuilt, re.M)
    assert re.search(rf"^COPY --from=builder /out/{binary} /usr/local/bin/{binary}$", final, re.M)
    assert re.search(r"^USER 65532:65532$", runtime, re.M)
    assert re.search(rf"^EXPOSE {port}$", runtime, re.M)
    assert f'ENTRYPOINT ["/usr/local/bin/{binary}"]' in runtime
    assert (ROOT / binary / "Cargo.toml").is_file()
