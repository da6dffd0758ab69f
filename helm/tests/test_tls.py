"""TLS to every dependency (Redis, NATS, the OTLP collector), every NATS auth method on both
deployments with and without TLS, the grace periods against the drain and shutdown timeouts,
and the `helm test` pod (whose shell script runs here against a stand-in gateway)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socketserver
import subprocess
import threading

import helm_python as helm
import pytest
import yaml

from conftest import CHART_DIR, RELEASE, labels_match, load_values, merged

GATEWAY = f"{RELEASE}-realtime-gateway-gateway"
SECRET = f"{RELEASE}-realtime-gateway"
COMPONENTS = ["gateway", "bridge"]
# Every variable that names a TLS file, and the volume its file comes from.
TLS_FILE_VARS = {
    "REDIS_TLS_CA_FILE": "redis-ca",
    "REDIS_TLS_CERT_FILE": "redis-client",
    "REDIS_TLS_KEY_FILE": "redis-client",
    "NATS_TLS_CA_FILE": "nats-ca",
    "NATS_TLS_CERT_FILE": "nats-client",
    "NATS_TLS_KEY_FILE": "nats-client",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "otel-ca",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "otel-client",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": "otel-client",
}


def pod(rendered, component):
    return rendered.deployment(component)["spec"]["template"]["spec"]


def volumes(rendered, component):
    return {v["name"]: v for v in pod(rendered, component)["volumes"]}


def mounts(rendered, component):
    return {m["name"]: m for m in rendered.container(component)["volumeMounts"]}


def file_of(rendered, component, var):
    """The (volume, item) an env var's path points at; asserts the path resolves to a mounted item."""
    path = rendered.env(component)[var]["value"]
    volume = TLS_FILE_VARS[var]
    mount = mounts(rendered, component)[volume]
    assert mount["readOnly"] is True, f"{component} {volume}"
    assert path.startswith(mount["mountPath"] + "/"), f"{var}={path} is outside {mount['mountPath']}"
    source = volumes(rendered, component)[volume]
    (item,) = [i for i in (source.get("secret") or source["configMap"])["items"] if i["path"] == path[len(mount["mountPath"]) + 1 :]]
    return source, item


def test_every_tls_option_reaches_both_binaries_as_read_only_files(render):
    rendered = render(load_values("tls"))
    for component in COMPONENTS:
        env = rendered.env(component)
        assert set(TLS_FILE_VARS) <= env.keys(), component
        expected = {
            "REDIS_TLS_CA_FILE": ("configMap", "redis-ca", "ca.pem"),
            "REDIS_TLS_CERT_FILE": ("secret", "realtime-redis-client-tls", "tls.crt"),
            "REDIS_TLS_KEY_FILE": ("secret", "realtime-redis-client-tls", "tls.key"),
            "NATS_TLS_CA_FILE": ("secret", "nats-ca", "ca.crt"),
            "NATS_TLS_CERT_FILE": ("secret", f"realtime-nats-{component}-tls", "tls.crt"),
            "NATS_TLS_KEY_FILE": ("secret", f"realtime-nats-{component}-tls", "tls.key"),
            "OTEL_EXPORTER_OTLP_CERTIFICATE": ("secret", "otel-ca", "ca.crt"),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": ("secret", "realtime-otel-client", "client.crt"),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": ("secret", "realtime-otel-client", "client.key"),
        }
        for var, (kind, name, key) in expected.items():
            source, item = file_of(rendered, component, var)
            assert kind in source, var
            assert (source[kind].get("secretName") or source[kind].get("name")) == name, var
            assert item["key"] == key, var
            mode = source[kind]["defaultMode"]
            if var.endswith(("_KEY", "_KEY_FILE")):
                assert mode == 0o440, f"{var}: a private key is not world-readable"
            assert mode & 0o222 == 0, f"{var}: read-only"
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "REDIS_URL"}
        assert env["NATS_TLS_REQUIRED"]["value"] == "true"
        assert env["NATS_URL"]["value"].startswith("tls://")
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "https://otlp.vendor.example"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
        # TLS combines with the NATS users: each component keeps its own.
        assert env["NATS_USER"]["value"] == component
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == f"NATS_{component.upper()}_PASSWORD"
    (secret,) = rendered.of_kind("Secret")
    assert secret["stringData"]["REDIS_URL"].startswith("rediss://")
    for policy in rendered.of_kind("NetworkPolicy"):
        ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert {4222, 6380, 443} <= ports, "an https:// endpoint without a port is 443"


def test_a_default_install_renders_no_tls_file(render):
    rendered = render(load_values("minimal"))
    for component in COMPONENTS:
        env = rendered.env(component)
        assert not set(TLS_FILE_VARS) & env.keys()
        assert "NATS_TLS_REQUIRED" not in env
        assert list(volumes(rendered, component)) == ["tmp"]
        assert list(mounts(rendered, component)) == ["tmp"]


def test_tls_values_default_to_off_and_to_kubernetes_tls_secret_keys():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for block in (values["redis"]["tls"], values["nats"]["tls"], values["otel"]["tls"]):
        assert block["ca"] == {"secretName": "", "configMapName": "", "key": "ca.crt"}
        cert = block["clientCert"]
        assert (cert["certKey"], cert["keyKey"]) == ("tls.crt", "tls.key"), "cert-manager's kubernetes.io/tls keys"
        assert not any(v for k, v in cert.items() if k.endswith("ecretName"))
    assert values["nats"]["tls"]["required"] is False
    assert values["otel"]["protocol"] == "http/protobuf"
    assert values["redis"]["url"] == "" and values["otel"]["endpoint"] == ""


def test_redis_tls_with_a_plain_url_and_a_ca_from_a_secret(render):
    values = merged(load_values("minimal"), {"redis": {"url": "rediss://redis.example:6380/0", "tls": {"ca": {"secretName": "redis-ca"}}}})
    rendered = render(values)
    for component in COMPONENTS:
        env = rendered.env(component)
        assert env["REDIS_URL"]["value"] == "rediss://redis.example:6380/0"
        source, item = file_of(rendered, component, "REDIS_TLS_CA_FILE")
        assert source["secret"]["secretName"] == "redis-ca" and item == {"key": "ca.crt", "path": "ca.crt"}
        assert "REDIS_TLS_CERT_FILE" not in env and "REDIS_TLS_KEY_FILE" not in env
    # rediss:// without a CA: the system roots, nothing mounted.
    roots = render(merged(load_values("minimal"), {"redis": {"url": "rediss://cache.example:6380"}}))
    for component in COMPONENTS:
        assert not {"REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE"} & roots.env(component).keys()


def test_redis_tls_files_with_the_url_in_an_existing_secret(render):
    # The chart cannot read the scheme of a URL in a Secret it does not create: it mounts what it is given.
    values = merged(load_values("existing-secret"), {"redis": {"tls": {"clientCert": {"secretName": "redis-mtls"}}}})
    rendered = render(values)
    for component in COMPONENTS:
        source, item = file_of(rendered, component, "REDIS_TLS_KEY_FILE")
        assert source["secret"]["secretName"] == "redis-mtls" and item["key"] == "tls.key"
        assert rendered.env(component)["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "menu-backend-secrets"


NATS_METHODS = {
    "userPassword": {},
    "credentials": {"nats": {"auth": {"method": "credentials", "gateway": {"credentialsSecret": "gw-creds"}, "bridge": {"credentialsSecret": "br-creds"}}}},
    "token": {"nats": {"auth": {"method": "token"}}, "secrets": {"natsToken": "t0ken"}},
    "none": {"nats": {"auth": {"method": "none", "allowAnonymous": True}}},
}
NATS_TLS = {
    "plain": {},
    "tls": {
        "nats": {
            "url": "tls://nats:4222",
            "tls": {
                "required": True,
                "ca": {"configMapName": "nats-ca"},
                "clientCert": {"gatewaySecretName": "gw-tls", "bridgeSecretName": "br-tls"},
            },
        }
    },
}
AUTH_VARS = {"NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS_FILE", "NATS_ALLOW_ANONYMOUS"}


@pytest.mark.parametrize("tls", list(NATS_TLS))
@pytest.mark.parametrize("method", list(NATS_METHODS))
def test_every_nats_auth_method_reaches_both_deployments_with_and_without_tls(render, method, tls):
    values = merged(merged(load_values("minimal"), NATS_METHODS[method]), NATS_TLS[tls])
    rendered = render(values)
    (secret,) = rendered.of_kind("Secret")
    for component in COMPONENTS:
        env = rendered.env(component)
        expected = {
            "userPassword": {"NATS_USER", "NATS_PASSWORD"},
            "credentials": {"NATS_CREDS_FILE"},
            "token": {"NATS_TOKEN"},
            "none": {"NATS_ALLOW_ANONYMOUS"},
        }[method]
        assert AUTH_VARS & env.keys() == expected, component
        if method == "userPassword":
            assert env["NATS_USER"]["value"] == component
            ref = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": SECRET, "key": f"NATS_{component.upper()}_PASSWORD"}
            assert ref["key"] in secret["stringData"]
        elif method == "token":
            ref = env["NATS_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": SECRET, "key": "NATS_TOKEN"} and secret["stringData"]["NATS_TOKEN"] == "t0ken"
        elif method == "credentials":
            path = env["NATS_CREDS_FILE"]["value"]
            creds = volumes(rendered, component)["nats-creds"]["secret"]
            assert creds["secretName"] == {"gateway": "gw-creds", "bridge": "br-creds"}[component]
            assert path == f"{mounts(rendered, component)['nats-creds']['mountPath']}/{creds['items'][0]['path']}"
            assert mounts(rendered, component)["nats-creds"]["readOnly"] is True
        else:
            assert env["NATS_ALLOW_ANONYMOUS"]["value"] == "true"
        tls_vars = {"NATS_TLS_CA_FILE", "NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE", "NATS_TLS_REQUIRED"}
        if tls == "plain":
            assert not tls_vars & env.keys()
            continue
        assert tls_vars <= env.keys()
        assert env["NATS_TLS_REQUIRED"]["value"] == "true"
        source, _ = file_of(rendered, component, "NATS_TLS_CA_FILE")
        assert source["configMap"]["name"] == "nats-ca"
        for var in ("NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE"):
            source, _ = file_of(rendered, component, var)
            assert source["secret"]["secretName"] == {"gateway": "gw-tls", "bridge": "br-tls"}[component], "each component its own certificate"


def test_nats_client_certificate_of_the_gateway_alone_when_the_bridge_is_off(render):
    values = merged(load_values("minimal"), {"bridge": {"enabled": False}, "nats": {"tls": {"clientCert": {"gatewaySecretName": "gw-tls"}}}})
    rendered = render(values)
    source, _ = file_of(rendered, "gateway", "NATS_TLS_CERT_FILE")
    assert source["secret"]["secretName"] == "gw-tls"


@pytest.mark.parametrize(
    "otel, port",
    [
        ({"endpoint": "http://otel-collector:4317", "protocol": "grpc"}, 4317),
        ({"endpoint": "https://otlp.vendor.example:4443/otlp", "protocol": "http/protobuf"}, 4443),
        ({"endpoint": "http://otel-collector"}, 80),
    ],
    ids=lambda v: json.dumps(v),
)
def test_otlp_protocol_endpoint_and_egress_port(render, otel, port):
    values = merged(load_values("observability"), {"otel": otel})
    rendered = render(values)
    for component in COMPONENTS:
        env = rendered.env(component)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == otel["endpoint"]
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == otel.get("protocol", "http/protobuf")
        assert not {"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"} & env.keys()
        egress = rendered.get("NetworkPolicy", rendered.deployment(component)["metadata"]["name"])["spec"]["egress"]
        assert port in {p["port"] for rule in egress for p in rule["ports"]}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"redis": {"url": "redis://:s3cret@redis:6379/0"}}, "redis.url holds a password"),
        ({"redis": {"url": "rediss://default:s3cret@redis:6380"}}, "redis.url holds a password"),
        ({"redis": {"tls": {"ca": {"secretName": "ca"}}}}, "redis.tls.ca and redis.tls.clientCert apply to TLS connections only"),
        ({"redis": {"tls": {"clientCert": {"secretName": "c"}}}}, "the Redis URL is not rediss://"),
        ({"redis": {"url": "", "urlFromSecret": True, "tls": {"ca": {"configMapName": "ca"}}}, "secrets": {"redisUrl": "redis://:p@r:6379"}}, "the Redis URL is not rediss://"),
        ({"redis": {"url": "rediss://r:6380", "tls": {"ca": {"secretName": "a", "configMapName": "b"}}}}, "set redis.tls.ca.secretName or redis.tls.ca.configMapName, not both"),
        ({"redis": {"url": "rediss://r:6380", "tls": {"clientCert": {"secretName": "c", "keyKey": ""}}}}, "redis.tls.clientCert needs both certKey and keyKey"),
        ({"redis": {"url": "rediss://r:6380", "tls": {"clientCert": {"secretName": "c", "certKey": ""}}}}, "redis.tls.clientCert needs both certKey and keyKey"),
        ({"nats": {"tls": {"clientCert": {"gatewaySecretName": "g"}}}}, "nats.tls.clientCert.bridgeSecretName is empty"),
        ({"nats": {"tls": {"clientCert": {"bridgeSecretName": "b"}}}}, "nats.tls.clientCert.gatewaySecretName is empty"),
        ({"nats": {"tls": {"clientCert": {"gatewaySecretName": "g", "bridgeSecretName": "b", "keyKey": ""}}}}, "nats.tls.clientCert needs both certKey and keyKey"),
        ({"otel": {"tls": {"ca": {"secretName": "ca"}}}}, "otel.tls needs otel.endpoint"),
        ({"otel": {"endpoint": "http://c:4317", "protocol": "grpc", "tls": {"ca": {"secretName": "ca"}}}}, "otel.tls.ca and otel.tls.clientCert apply to https:// endpoints only"),
        ({"otel": {"endpoint": "http://c:4318", "tls": {"clientCert": {"secretName": "c"}}}}, "apply to https:// endpoints only"),
        ({"otel": {"endpoint": "https://c", "tls": {"ca": {"secretName": "a", "configMapName": "b"}}}}, "set otel.tls.ca.secretName or otel.tls.ca.configMapName, not both"),
        ({"otel": {"endpoint": "https://c", "tls": {"clientCert": {"secretName": "c", "keyKey": ""}}}}, "otel.tls.clientCert needs both certKey and keyKey"),
        # Grace periods: an explicit value too small for the drain or the bridge's shutdown.
        ({"gateway": {"terminationGracePeriodSeconds": 30}}, "gateway.terminationGracePeriodSeconds (30) must exceed gateway.preStopSleepSeconds + gateway.shutdownTimeoutSeconds (30)"),
        ({"gateway": {"preStopSleepSeconds": 20, "terminationGracePeriodSeconds": 40}}, "gateway.terminationGracePeriodSeconds (40) must exceed gateway.preStopSleepSeconds + gateway.shutdownTimeoutSeconds (45)"),
        ({"gateway": {"drainWindowSeconds": 25}}, "gateway.drainWindowSeconds (25) must be shorter than gateway.shutdownTimeoutSeconds (25)"),
        ({"bridge": {"terminationGracePeriodSeconds": 20}}, "bridge.terminationGracePeriodSeconds (20) must exceed bridge.shutdownTimeoutSeconds (20)"),
        ({"bridge": {"shutdownTimeoutSeconds": 60, "terminationGracePeriodSeconds": 45}}, "bridge.terminationGracePeriodSeconds (45) must exceed bridge.shutdownTimeoutSeconds (60)"),
        ({"tests": {"image": {"tag": ""}}}, "tests.image needs a tag or a digest"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v),
)
def test_inconsistent_tls_and_timing_values_fail_with_one_clear_message(render, values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(merged(load_values("minimal"), values))


@pytest.mark.parametrize(
    "bad",
    [
        {"otel": {"protocol": "http/json"}},
        {"otel": {"endpoint": "grpc://collector:4317"}},
        {"redis": {"url": "http://redis:6379"}},
        {"redis": {"tls": {"ca": {"key": ""}}}},
        {"redis": {"tls": {"clientCert": {"configMapName": "keys-are-secret"}}}},
        {"nats": {"tls": {"clientCert": {"secretName": "one-for-both"}}}},
        {"gateway": {"env": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}}},  # typed key: otel.protocol
        {"bridge": {"env": {"REDIS_TLS_CA_FILE": "/x"}}},  # typed key: redis.tls.ca
        {"bridge": {"terminationGracePeriodSeconds": "30s"}},
        {"tests": {"enabled": "yes"}},
        {"tests": {"image": {"digest": "latest"}}},
    ],
    ids=lambda v: json.dumps(v),
)
def test_the_schema_rejects_wrong_tls_values(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(merged(load_values("minimal"), bad))


def test_explicit_grace_periods_are_used_when_long_enough(render):
    rendered = render(merged(load_values("minimal"), {"gateway": {"terminationGracePeriodSeconds": 31}, "bridge": {"terminationGracePeriodSeconds": 21}}))
    assert pod(rendered, "gateway")["terminationGracePeriodSeconds"] == 31
    assert pod(rendered, "bridge")["terminationGracePeriodSeconds"] == 21
    default = render(merged(load_values("minimal"), {"bridge": {"shutdownTimeoutSeconds": 45}}))
    assert pod(default, "bridge")["terminationGracePeriodSeconds"] == 55
    assert default.env("bridge")["BRIDGE_SHUTDOWN_TIMEOUT"]["value"] == "45s"
    # With the bridge off its values are not checked.
    render(merged(load_values("minimal"), {"bridge": {"enabled": False, "terminationGracePeriodSeconds": 1}}))


# The helm test pod.


def helm_test_pod(rendered):
    (test,) = [o for o in rendered.of_kind("Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    return test


def test_the_helm_test_pod_checks_the_gateway_service(render):
    rendered = render(load_values("ingress"))
    test = helm_test_pod(rendered)
    assert test["metadata"]["name"] == f"{RELEASE}-realtime-gateway-test-gateway"
    assert "hook-succeeded" in test["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    spec = test["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 120
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    (container,) = spec["containers"]
    assert container["image"] == "docker.io/curlimages/curl:8.11.1"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    env = {e["name"]: e["value"] for e in container["env"]}
    service = rendered.get("Service", GATEWAY)
    assert env["GATEWAY_URL"] == f"http://{GATEWAY}.prod.svc:{service['spec']['ports'][0]['port']}"
    assert env["ORIGIN"] == "https://app.example.com", "the first allowed origin, so the refusal is the token's (4001)"
    script = container["command"][-1]
    assert '"$GATEWAY_URL/readyz"' in script and '"$GATEWAY_URL/ws/waiter"' in script
    reason = b"Authentication failed"
    close_frame = bytes([0x88, 2 + len(reason)]) + (4001).to_bytes(2, "big") + reason
    assert close_frame.hex() in script, "the 4001 close frame the gateway sends after the 101"
    assert "helm test rt -n prod --logs" in rendered.notes
    default_origin = helm_test_pod(render(load_values("minimal")))["spec"]["containers"][0]["env"]
    assert {"name": "ORIGIN", "value": "http://localhost:5173"} in default_origin, "the binary's default origins"


def test_the_helm_test_pod_image_is_configurable_and_can_be_turned_off(render):
    digest = "sha256:" + "a" * 64
    values = merged(load_values("minimal"), {"image": {"registry": "registry.example.com"}, "tests": {"image": {"registry": "mirror.example.com/", "repository": "tools/curl", "digest": digest, "pullPolicy": "Always"}}})
    (container,) = helm_test_pod(render(values))["spec"]["containers"]
    assert container["image"] == f"mirror.example.com/tools/curl@{digest}", "its own registry, not the gateway's"
    assert container["imagePullPolicy"] == "Always"
    off = render(merged(load_values("observability"), {"tests": {"enabled": False}}))
    assert off.of_kind("Pod") == []
    assert "helm test" not in off.notes
    rules = off.get("NetworkPolicy", GATEWAY)["spec"]["ingress"]
    assert not [peer for rule in rules for peer in rule.get("from", []) if "podSelector" in peer]


def test_the_network_policy_lets_the_helm_test_pod_reach_the_gateway(render):
    for value_set in ["observability", "tls"]:
        rendered = render(load_values(value_set))
        test_labels = helm_test_pod(rendered)["metadata"]["labels"]
        gateway_port = rendered.container("gateway")["ports"][0]["containerPort"]
        policy = rendered.get("NetworkPolicy", GATEWAY)
        allowed = [
            rule for rule in policy["spec"]["ingress"]
            if {"port": gateway_port, "protocol": "TCP"} in rule["ports"]
            and (
                "from" not in rule
                or any(set(peer) == {"podSelector"} and labels_match(peer["podSelector"]["matchLabels"], test_labels) for peer in rule["from"])
            )
        ]
        assert allowed, value_set
        for rule in policy["spec"]["ingress"]:
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    assert rule["ports"] == [{"port": gateway_port, "protocol": "TCP"}], "the test pod reaches the public port only"
                    gateway_labels = rendered.deployment("gateway")["spec"]["template"]["metadata"]["labels"]
                    assert not labels_match(peer["podSelector"]["matchLabels"], gateway_labels)


# The test pod's script, run here with the local sh, curl, od and tr against a stand-in that
# answers as the gateway does (gateway/src/connection/handshake.rs): /readyz 200, then a 101 and
# at once the close frame of the refusal, and TCP closed 2 s later at most (here at once).


def close_frame(code: int, reason: str) -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode()
    return bytes([0x88, len(payload)]) + payload


class StandIn(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ready = 200
    upgrade = True
    close = close_frame(4001, "Authentication failed")
    seen: list[dict[str, str]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        if self.path == "/readyz":
            body = b'{"status":"ready"}'
            self.send_response(self.ready)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.upgrade and self.path == "/ws/waiter" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "upgrade")
            self.send_header("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            self.end_headers()
            self.wfile.write(self.close)
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    handler = type("Handler", (StandIn,), {"seen": []})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_test_pod(render, url: str) -> subprocess.CompletedProcess:
    (container,) = helm_test_pod(render(load_values("ingress")))["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]} | {"GATEWAY_URL": url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(container["command"], env=env, capture_output=True, text=True, errors="replace", timeout=60)


needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("sh", "curl", "od", "tr")), reason="needs sh, curl, od and tr")


@needs_tools
def test_the_helm_test_script_passes_on_101_and_4001(render, stand_in):
    handler, url = stand_in
    result = run_test_pod(render, url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 101 Switching Protocols, then close 4001 Authentication failed" in result.stdout
    upgrade = [r for r in handler.seen if r["path"] == "/ws/waiter"][0]
    assert upgrade["origin"] == "https://app.example.com"
    assert upgrade["sec-websocket-version"] == "13" and upgrade["upgrade"] == "websocket"


@needs_tools
@pytest.mark.parametrize(
    "close, message",
    [
        (close_frame(4003, "Origin not allowed"), "FAIL: close 4003"),
        (close_frame(1012, "Service restart"), "FAIL: close 1012"),
        (b"", "FAIL: no close frame 4001"),
    ],
    ids=["origin", "draining", "no-close"],
)
def test_the_helm_test_script_fails_on_any_other_answer(render, stand_in, close, message):
    handler, url = stand_in
    handler.close = close
    result = run_test_pod(render, url)
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr


@needs_tools
def test_the_helm_test_script_fails_without_an_upgrade(render, stand_in):
    handler, url = stand_in
    result = run_test_pod(render, url.replace("127.0.0.1", "localhost") + "/nothing-here")
    assert result.returncode != 0
