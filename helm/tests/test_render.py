"""The chart renders, lints and validates for every value set in values/, and the objects carry
what operations depend on: probes, drain timing, selectors, security, secrets, ingress, HPA,
NATS TLS/credentials, ServiceMonitor, NetworkPolicy, the admin API and OTLP traces."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import (
    CHART_DIR,
    KUBE_VERSION,
    RELEASE,
    VALUE_SETS,
    labels_match,
    load_values,
    merged,
    seconds,
)

GATEWAY = f"{RELEASE}-realtime-gateway-gateway"
BRIDGE = f"{RELEASE}-realtime-gateway-bridge"
# Custom resources: no Kubernetes schema to validate against; their fields are asserted below.
CRD_KINDS = {"ServiceMonitor"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lints_clean(value_set):
    report = helm.lint(CHART_DIR, load_values(value_set), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_matches_the_kubernetes_schema(render, value_set):
    rendered = render(load_values(value_set))
    assert rendered.objects, "nothing rendered"
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue  # explicitly skipped: a CRD; see test_service_monitor
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_hit_the_binaries_endpoints_on_their_listen_port(render, value_set):
    rendered = render(load_values(value_set))
    for component, port_name, env_name in [("gateway", "http", "GATEWAY_LISTEN_ADDR"), ("bridge", "metrics", "BRIDGE_LISTEN_ADDR")]:
        container = rendered.container(component)
        (port,) = [p for p in container["ports"] if p["name"] == port_name]
        listen = rendered.env(component)[env_name]["value"]
        assert listen == f"0.0.0.0:{port['containerPort']}"
        for probe, path in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")]:
            get = container[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, port_name), f"{component} {probe}"
    assert rendered.container("gateway")["ports"][0]["containerPort"] == 8001
    assert rendered.container("bridge")["ports"][0]["containerPort"] == 9100


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_grace_period_outlasts_the_drain(render, value_set):
    rendered = render(load_values(value_set))
    pod = rendered.deployment("gateway")["spec"]["template"]["spec"]
    env = rendered.env("gateway")
    grace = pod["terminationGracePeriodSeconds"]
    shutdown = seconds(env["GATEWAY_SHUTDOWN_TIMEOUT"]["value"])
    drain = seconds(env["GATEWAY_DRAIN_WINDOW"]["value"])
    pre_stop = rendered.container("gateway").get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert grace > shutdown > drain
    assert grace > pre_stop + shutdown, "SIGTERM comes after the preStop sleep, inside the same grace period"
    bridge_pod = rendered.deployment("bridge")["spec"]["template"]["spec"]
    assert bridge_pod["terminationGracePeriodSeconds"] > seconds(rendered.env("bridge")["BRIDGE_SHUTDOWN_TIMEOUT"]["value"])


def test_default_drain_timing(render):
    rendered = render(load_values("minimal"))
    env = rendered.env("gateway")
    assert env["GATEWAY_DRAIN_WINDOW"]["value"] == "15s"
    assert env["GATEWAY_SHUTDOWN_TIMEOUT"]["value"] == "25s"
    assert rendered.container("gateway")["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert rendered.deployment("gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35
    no_sleep = render(load_values("minimal") | {"gateway": {"preStopSleepSeconds": 0}})
    assert "lifecycle" not in no_sleep.container("gateway")
    assert no_sleep.deployment("gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_selectors_match_their_pods_only(render, value_set):
    rendered = render(load_values(value_set))
    pods = {}
    for component in ["gateway", "bridge"]:
        deployment = rendered.deployment(component)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels_match(deployment["spec"]["selector"]["matchLabels"], labels)
        for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        pods[component] = labels
    other = {"gateway": "bridge", "bridge": "gateway"}
    for service in rendered.of_kind("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert labels_match(service["spec"]["selector"], pods[component]), service["metadata"]["name"]
        assert not labels_match(service["spec"]["selector"], pods[other[component]]), service["metadata"]["name"]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pdb["metadata"]["name"] == rendered.deployment(component)["metadata"]["name"]
        assert labels_match(pdb["spec"]["selector"]["matchLabels"], pods[component])
        assert not labels_match(pdb["spec"]["selector"]["matchLabels"], pods[other[component]])
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    for policy in rendered.of_kind("NetworkPolicy"):
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        assert labels_match(policy["spec"]["podSelector"]["matchLabels"], pods[component])
        assert not labels_match(policy["spec"]["podSelector"]["matchLabels"], pods[other[component]])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_run_non_root_read_only_without_capabilities(render, value_set):
    rendered = render(load_values(value_set))
    for component in ["gateway", "bridge"]:
        pod = rendered.deployment(component)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def secret_refs(rendered, component):
    return {
        name: entry["valueFrom"]["secretKeyRef"]
        for name, entry in rendered.env(component).items()
        if "secretKeyRef" in entry.get("valueFrom", {})
    }


def test_an_existing_secret_is_referenced_not_created(render):
    rendered = render(load_values("existing-secret"))
    assert rendered.of_kind("Secret") == []
    gateway = secret_refs(rendered, "gateway")
    assert gateway == {
        "JWT_SECRET": {"name": "menu-backend-secrets", "key": "jwt-secret"},
        "TABLE_TOKEN_SECRET": {"name": "menu-backend-secrets", "key": "table-token-secret"},
        "REDIS_URL": {"name": "menu-backend-secrets", "key": "redis-url"},
        "DATABASE_URL": {"name": "menu-backend-secrets", "key": "database-url"},
        "NATS_PASSWORD": {"name": "menu-backend-secrets", "key": "nats-gateway-password"},
    }
    assert secret_refs(rendered, "bridge") == {
        "REDIS_URL": {"name": "menu-backend-secrets", "key": "redis-url"},
        "NATS_PASSWORD": {"name": "menu-backend-secrets", "key": "nats-bridge-password"},
    }
    for component in ["gateway", "bridge"]:
        annotations = rendered.deployment(component)["spec"]["template"]["metadata"].get("annotations") or {}
        assert "checksum/secret" not in annotations
    env = rendered.env("gateway")
    assert env["ALLOWED_ORIGINS"]["value"] == "https://waiter.example.com,https://kitchen.example.com"
    assert env["WS_MAX_CONNECTIONS_PER_USER"]["value"] == "5"
    assert env["REVOCATION_FAIL_OPEN"]["value"] == "false"


def test_a_chart_secret_holds_the_given_values_and_rolls_the_pods(render):
    rendered = render(load_values("observability"))
    (secret,) = rendered.of_kind("Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-realtime-gateway"
    assert secret["stringData"] == {
        "JWT_SECRET": "test-jwt-secret",
        "TABLE_TOKEN_SECRET": "test-table-secret",
        "REDIS_URL": "redis://:s3cret@backend-redis:6379/0",
        "NATS_GATEWAY_PASSWORD": "nats-gateway-s3cret",
        "NATS_BRIDGE_PASSWORD": "nats-bridge-s3cret",
        "GATEWAY_ADMIN_TOKEN": "test-admin-token-0123456789",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cret",
    }
    for component in ["gateway", "bridge"]:
        for name, ref in secret_refs(rendered, component).items():
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], name
        assert "checksum/secret" in rendered.deployment(component)["spec"]["template"]["metadata"]["annotations"]
    for component in ["gateway", "bridge"]:
        assert rendered.env(component)["NATS_USER"]["value"] == f"realtime-{component}"
        assert secret_refs(rendered, component)["NATS_PASSWORD"]["key"] == f"NATS_{component.upper()}_PASSWORD"


def test_nats_tls_and_credentials_are_mounted_from_secrets(render):
    rendered = render(load_values("nats-tls-credentials"))
    for component in ["gateway", "bridge"]:
        env = rendered.env(component)
        assert env["NATS_URL"]["value"].startswith("tls://")
        assert env["NATS_TLS_REQUIRED"]["value"] == "true"
        pod = rendered.deployment(component)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in rendered.container(component)["volumeMounts"]}
        for var, volume, secret, key in [
            ("NATS_CREDS_FILE", "nats-creds", f"realtime-nats-{component}-creds", "user.creds"),
            ("NATS_TLS_CA_FILE", "nats-ca", "nats-ca", "ca.crt"),
        ]:
            assert volumes[volume]["secret"]["secretName"] == secret
            assert volumes[volume]["secret"]["items"] == [{"key": key, "path": key}]
            assert mounts[volume]["readOnly"] is True
            assert env[var]["value"] == f"{mounts[volume]['mountPath']}/{key}"
        assert not {"NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_ALLOW_ANONYMOUS"} & env.keys()
    bridge = rendered.env("bridge")
    assert bridge["BRIDGE_EVENTS_REPLICAS"]["value"] == "3"
    assert bridge["BRIDGE_EVENTS_MAX_BYTES"]["value"] == "10737418240", "large numbers stay integers"


def test_by_default_each_component_logs_in_as_its_own_nats_user(render):
    rendered = render(load_values("minimal"))
    (secret,) = rendered.of_kind("Secret")
    assert secret["stringData"]["NATS_GATEWAY_PASSWORD"] == "test-nats-gateway-password"
    assert secret["stringData"]["NATS_BRIDGE_PASSWORD"] == "test-nats-bridge-password"
    for component, user in [("gateway", "gateway"), ("bridge", "bridge")]:
        env = rendered.env(component)
        assert env["NATS_USER"]["value"] == user, "the users of deploy/nats/auth.conf and the chart README"
        key = f"NATS_{component.upper()}_PASSWORD"
        assert secret_refs(rendered, component)["NATS_PASSWORD"] == {"name": f"{RELEASE}-realtime-gateway", "key": key}
        assert "NATS_ALLOW_ANONYMOUS" not in env


def test_anonymous_nats_only_with_the_explicit_opt_out(render):
    rendered = render(load_values("nats-anonymous"))
    for component in ["gateway", "bridge"]:
        env = rendered.env(component)
        assert env["NATS_ALLOW_ANONYMOUS"]["value"] == "true", "the binaries refuse anonymous NATS otherwise"
        assert not {"NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS_FILE"} & env.keys()
    (secret,) = rendered.of_kind("Secret")
    assert not {"NATS_GATEWAY_PASSWORD", "NATS_BRIDGE_PASSWORD"} & secret["stringData"].keys()


def test_nats_token(render):
    values = load_values("minimal")
    values["secrets"]["natsToken"] = "t0ken"
    rendered = render(values | {"nats": {"auth": {"method": "token"}}})
    for component in ["gateway", "bridge"]:
        assert secret_refs(rendered, component)["NATS_TOKEN"] == {"name": f"{RELEASE}-realtime-gateway", "key": "NATS_TOKEN"}
        assert "NATS_USER" not in rendered.env(component)


def test_ingress_keeps_websockets_open_longer_than_the_heartbeat(render):
    rendered = render(load_values("ingress"))
    ingress = rendered.get("Ingress", GATEWAY)
    heartbeat = seconds(rendered.env("gateway")["WS_HEARTBEAT_TIMEOUT"]["value"])
    annotations = ingress["metadata"]["annotations"]
    for key in ["nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"]:
        assert int(annotations[key]) > heartbeat
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "ws-example-com-tls", "hosts": ["ws.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert set(paths) == {"/ws/waiter", "/ws/kitchen", "/ws/admin", "/ws/diner", "/ws/health", "/ws/catchup"}
    assert "/metrics" not in paths and "/ws/metrics" not in paths
    service = rendered.get("Service", GATEWAY)
    for path in paths.values():
        backend = path["backend"]["service"]
        assert backend["name"] == GATEWAY
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert "wss://ws.example.com/ws/waiter?token=" in rendered.notes


def test_autoscaling_replaces_the_replica_count(render):
    rendered = render(load_values("autoscaling"))
    assert "replicas" not in rendered.deployment("gateway")["spec"]
    hpa = rendered.get("HorizontalPodAutoscaler", GATEWAY)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    metrics = {m["type"] + "/" + (m.get("resource", {}).get("name") or m["pods"]["metric"]["name"]): m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource/cpu"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert metrics["Resource/memory"]["resource"]["target"]["averageUtilization"] == 80
    assert metrics["Pods/gateway_connections"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "8000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    pdb = rendered.get("PodDisruptionBudget", GATEWAY)
    assert pdb["spec"] == {"minAvailable": 2, "selector": pdb["spec"]["selector"]}
    assert rendered.deployment("gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 70
    assert "Replicas: 3 to 20" in rendered.notes
    fixed = render(load_values("minimal"))
    assert fixed.deployment("gateway")["spec"]["replicas"] == 3
    assert fixed.deployment("bridge")["spec"]["replicas"] == 2
    assert fixed.of_kind("HorizontalPodAutoscaler") == []


def test_service_monitor(render):
    rendered = render(load_values("observability"))
    monitors = {m["metadata"]["name"]: m for m in rendered.of_kind("ServiceMonitor")}
    assert set(monitors) == {GATEWAY, BRIDGE}
    services = rendered.of_kind("Service")
    assert {s["metadata"]["name"] for s in services} == {GATEWAY, f"{GATEWAY}-headless", f"{GATEWAY}-admin", BRIDGE}
    for name, port in [(GATEWAY, "http"), (BRIDGE, "metrics")]:
        monitor = monitors[name]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["prod"]}
        assert monitor["spec"]["endpoints"] == [{"port": port, "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
        selector = monitor["spec"]["selector"]
        assert selector["matchExpressions"] == [{"key": "realtime-gateway/headless", "operator": "DoesNotExist"}]
        selected = [
            s for s in services
            if labels_match(selector["matchLabels"], s["metadata"]["labels"]) and "realtime-gateway/headless" not in s["metadata"]["labels"]
        ]
        assert [s["metadata"]["name"] for s in selected] == [name], "exactly one Service per component is scraped"
        assert port in {p["name"] for p in selected[0]["spec"]["ports"]}
    headless = rendered.get("Service", f"{GATEWAY}-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_network_policy(render):
    rendered = render(load_values("observability"))
    gateway = rendered.get("NetworkPolicy", GATEWAY)
    bridge = rendered.get("NetworkPolicy", BRIDGE)
    assert gateway["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rule, test_pod, admin = gateway["spec"]["ingress"]
    assert test_pod["ports"] == [{"port": 8001, "protocol": "TCP"}], "the helm test pod (test_tls.py)"
    assert [set(peer) for peer in test_pod["from"]] == [{"podSelector"}]
    assert rule["ports"] == [{"port": 8001, "protocol": "TCP"}]
    namespaces = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]]
    assert namespaces == ["ingress-nginx", "monitoring"]
    assert admin["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in admin["from"]] == ["operations"]
    (rule,) = bridge["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9100, "protocol": "TCP"}]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]] == ["monitoring"]
    egress_ports = {p["port"] for r in gateway["spec"]["egress"] for p in r["ports"]}
    assert egress_ports == {53, 4222, 6379, 5432, 4318}, "the OTLP collector's port is added"
    no_admin_peers = render(merged(load_values("observability"), {"networkPolicy": {"adminFrom": []}}))
    rules = no_admin_peers.get("NetworkPolicy", GATEWAY)["spec"]["ingress"]
    assert [r["ports"] for r in rules] == [[{"port": 8001, "protocol": "TCP"}]] * 2, "without adminFrom no peer reaches the admin port"


def test_admin_api_has_its_own_port_service_and_token(render):
    rendered = render(load_values("observability"))
    container = rendered.container("gateway")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8001, "admin": 9090}
    env = rendered.env("gateway")
    assert env["GATEWAY_ADMIN_LISTEN_ADDR"]["value"] == "0.0.0.0:9090"
    assert env["GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-realtime-gateway", "key": "GATEWAY_ADMIN_TOKEN"}
    admin = rendered.get("Service", f"{GATEWAY}-admin")
    assert admin["spec"]["clusterIP"] == "None"
    assert admin["spec"]["publishNotReadyAddresses"] is True, "draining pods stay reachable"
    assert admin["spec"]["ports"] == [{"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP", "appProtocol": "http"}]
    public = rendered.get("Service", GATEWAY)
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"], "the public Service never carries the admin port"
    assert "GATEWAY_ADMIN_TOKEN" not in rendered.env("bridge")
    off = render(load_values("minimal"))
    assert "GATEWAY_ADMIN_TOKEN" not in off.env("gateway") and "GATEWAY_ADMIN_LISTEN_ADDR" not in off.env("gateway")
    assert [p["name"] for p in off.container("gateway")["ports"]] == ["http"]
    assert f"{GATEWAY}-admin" not in {s["metadata"]["name"] for s in off.of_kind("Service")}
    existing = render(merged(load_values("existing-secret"), {"gateway": {"admin": {"enabled": True}}}))
    assert existing.env("gateway")["GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "menu-backend-secrets"


def test_otel_values_become_the_standard_variables_of_both_binaries(render):
    rendered = render(load_values("observability"))
    for component in ["gateway", "bridge"]:
        env = rendered.env(component)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"
        assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"
        assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == "k8s.namespace.name=prod,deployment.environment=production"
        assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]["key"] == "OTEL_EXPORTER_OTLP_HEADERS"
    assert rendered.env("gateway")["OTEL_SERVICE_NAME"]["value"] == "realtime-gateway-eu"
    assert "OTEL_SERVICE_NAME" not in rendered.env("bridge"), "the bridge keeps its built-in name"
    off = render(load_values("minimal"))
    for component in ["gateway", "bridge"]:
        assert not [name for name in off.env(component) if name.startswith("OTEL_")], "no endpoint: no trace variables"


def test_notes_tell_how_to_connect_and_what_to_check(render):
    notes = render(load_values("minimal")).notes
    assert f"kubectl -n prod port-forward svc/{GATEWAY} 8001:80" in notes
    for endpoint in ["/ws/waiter?token=", "/ws/kitchen?token=", "/ws/admin?token=", "/ws/diner?table_token="]:
        assert f"ws://127.0.0.1:8001{endpoint}" in notes
    for check in ["/readyz", "/ws/health/detailed", "/metrics"]:
        assert f"http://127.0.0.1:8001{check}" in notes
    assert "WARNING: gateway.allowedOrigins is empty" in notes
    assert "grace period is 35 s" in notes
