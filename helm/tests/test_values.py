"""Values: the schema catches typos, the templates refuse inconsistent settings with a message
naming the values to fix, every variable the binaries read is reachable from values under its
exact name, and README documents every key."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest
import yaml

from conftest import CHART_DIR, ROOT, VALUE_SETS, load_values, merged, rust_env_names

SHARED_READS = rust_env_names("wire/src/natsconn.rs") | rust_env_names("wire/src/otel.rs")
if (ROOT / "wire/src/redisconn.rs").exists():  # REDIS_URL and REDIS_TLS_*, shared since the TLS work
    SHARED_READS |= rust_env_names("wire/src/redisconn.rs")
# The TLS variables of "TLS to every dependency, OTLP over gRPC and https", whose names were
# fixed before the binaries read them all: the chart sets them already, and they count as read
# here until the Rust sources define them (test_announced_tls_variables_are_read reports which).
ANNOUNCED_SHARED_READS = {
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
    "NATS_TLS_CERT_FILE",
    "NATS_TLS_KEY_FILE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
}
SHARED_READS_NOW = set(SHARED_READS)
SHARED_READS |= ANNOUNCED_SHARED_READS
GATEWAY_READS = rust_env_names("gateway/src/config/vars.rs") | SHARED_READS
BRIDGE_READS = rust_env_names("publisher-bridge/src/config.rs") | SHARED_READS
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def test_announced_tls_variables_are_read():
    missing = sorted(ANNOUNCED_SHARED_READS - SHARED_READS_NOW)
    if missing:
        pytest.skip(f"not defined in wire/src/{{natsconn,otel,redisconn}}.rs yet (the binaries' side is in progress): {missing}")


def test_the_rust_sources_were_read():
    assert {"JWT_SECRET", "WS_HEARTBEAT_TIMEOUT", "GATEWAY_DRAIN_WINDOW", "NATS_URL"} <= GATEWAY_READS
    assert {"REDIS_URL", "BRIDGE_LISTEN_ADDR", "NATS_CREDS_FILE"} <= BRIDGE_READS
    assert {"GATEWAY_ADMIN_TOKEN", "GATEWAY_ADMIN_LISTEN_ADDR", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER"} <= GATEWAY_READS
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES"} <= BRIDGE_READS


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_value_sets_pass_the_schema(chart, value_set):
    chart.validate_schema(load_values(value_set))


@pytest.mark.parametrize(
    "typo",
    [
        {"gateway": {"replicaCont": 3}},
        {"ingres": {"enabled": True}},
        {"gateway": {"autoscaling": {"maxReplica": 5}}},
        {"nats": {"tls": {"requierd": True}}},
        {"secrets": {"jwt_secret": "x"}},
        {"gateway": {"env": {"WS_HEARTBEAT_TIMOUT": "30s"}}},
        {"bridge": {"env": {"BRIDGE_READCOUNT": 10}}},
        {"gateway": {"readinessProbe": {"perodSeconds": 5}}},
    ],
    ids=lambda v: json.dumps(v),
)
def test_the_schema_rejects_typos(chart, render, typo):
    values = merged(load_values("minimal"), typo)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(values)


@pytest.mark.parametrize(
    "bad",
    [
        {"gateway": {"env": {"JWT_SECRET": "in-plain-text"}}},  # secrets go through secrets.*
        {"gateway": {"env": {"GATEWAY_DRAIN_WINDOW": "10s"}}},  # typed key: drainWindowSeconds
        {"gateway": {"allowedOrigins": ["*"]}},
        {"gateway": {"drainWindowSeconds": "15s"}},
        {"nats": {"url": "http://nats:4222"}},
        {"nats": {"auth": {"method": "password"}}},
        {"nats": {"auth": {"user": "realtime"}}},  # one user for both: nats.auth.gateway.user / bridge.user
        {"nats": {"auth": {"allowAnonymous": "yes"}}},
        {"logFormat": "xml"},
        {"otel": {"endpoint": "collector:4317"}},
        {"otel": {"protocol": "grpc/json"}},
        {"otel": {"sampler": "sometimes"}},
        {"otel": {"samplerArg": 2}},
        {"secrets": {"adminToken": "short"}},
        {"gateway": {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}}},  # typed key: otel.endpoint
        {"gateway": {"env": {"GATEWAY_ADMIN_TOKEN": "0123456789abcdef0123"}}},  # secrets go through secrets.*
    ],
    ids=lambda v: json.dumps(v),
)
def test_the_schema_rejects_wrong_values(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(merged(load_values("minimal"), bad))


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "secrets.jwtSecret is required"),
        ({"secrets": {"jwtSecret": "j"}}, "secrets.tableTokenSecret is required"),
        ({"secrets": {"jwtSecret": "j", "tableTokenSecret": "t"}}, "set redis.url"),
        ({"redis": {"urlFromSecret": True}}, "set either redis.url or redis.urlFromSecret"),
        ({"gateway": {"drainWindowSeconds": 30}}, "must be shorter than gateway.shutdownTimeoutSeconds"),
        ({"gateway": {"terminationGracePeriodSeconds": 30}}, "must exceed gateway.preStopSleepSeconds + gateway.shutdownTimeoutSeconds"),
        ({"ingress": {"enabled": True, "websocketTimeoutSeconds": 60}}, "ingress.websocketTimeoutSeconds (60) must exceed"),
        ({"database": {"enabled": True}}, "database.enabled needs secrets.databaseUrl"),
        ({"nats": {"auth": {"method": "none"}}}, "nats.auth.method=none: a NATS that admits anonymous clients"),
        ({"nats": {"auth": {"allowAnonymous": True}}}, "nats.auth.allowAnonymous applies to nats.auth.method=none only"),
        ({"nats": {"auth": {"gateway": {"user": ""}}}}, "needs nats.auth.gateway.user"),
        ({"nats": {"auth": {"bridge": {"user": "gateway"}}}}, "nats.auth.gateway.user and nats.auth.bridge.user must differ"),
        ({"secrets": {"jwtSecret": "j", "tableTokenSecret": "t", "natsGatewayPassword": "g"}, "redis": {"url": "redis://r:6379"}}, "needs secrets.natsBridgePassword"),
        ({"secrets": {"jwtSecret": "j", "tableTokenSecret": "t"}, "redis": {"url": "redis://r:6379"}}, "needs secrets.natsGatewayPassword"),
        ({"nats": {"auth": {"method": "token"}}}, "needs secrets.natsToken"),
        ({"nats": {"auth": {"method": "credentials"}}}, "needs nats.auth.gateway.credentialsSecret"),
        ({"nats": {"auth": {"method": "credentials", "gateway": {"credentialsSecret": "g"}}}}, "needs nats.auth.bridge.credentialsSecret"),
        ({"nats": {"tls": {"ca": {"secretName": "a", "configMapName": "b"}}}}, "not both"),
        ({"gateway": {"podDisruptionBudget": {"minAvailable": 1}}}, "set maxUnavailable or minAvailable, not both"),
        ({"bridge": {"podDisruptionBudget": {"maxUnavailable": None}}}, "bridge.podDisruptionBudget: set maxUnavailable or minAvailable"),
        ({"gateway": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}}, "gateway.autoscaling needs a metric"),
        ({"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 4}}}, "minReplicas must not exceed maxReplicas"),
        ({"gateway": {"admin": {"enabled": True}}}, "gateway.admin.enabled needs secrets.adminToken"),
        ({"gateway": {"admin": {"enabled": True, "port": 8001}}, "secrets": {"jwtSecret": "j", "tableTokenSecret": "t", "natsGatewayPassword": "g", "natsBridgePassword": "b", "adminToken": "a" * 16}, "redis": {"url": "redis://r:6379"}}, "must differ from gateway.containerPort"),
        ({"otel": {"headersFromSecret": True}}, "otel.headersFromSecret needs otel.endpoint"),
        ({"otel": {"endpoint": "http://c:4318", "headersFromSecret": True}}, "otel.headersFromSecret needs secrets.otelHeaders"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v),
)
def test_inconsistent_values_fail_with_a_clear_message(render, values, message):
    base = {} if values == {} or "secrets" in values else load_values("minimal")
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(merged(base, values))


def test_lint_reports_errors():
    # Lint mode tolerates `fail` (as Helm does for `required`), so the bare defaults lint clean;
    # a schema violation is an error.
    assert helm.lint(CHART_DIR, {}, strict=True)["errors"] == []
    report = helm.lint(CHART_DIR, merged(load_values("minimal"), {"gateway": {"replicaCont": 3}}), strict=True)
    assert any("replicaCont" in m["error"] for m in report["messages"] if m["severity"] == 3), report


def rendered_env_names(render, component: str) -> set[str]:
    """Env names the chart sets from typed keys, over all value sets (extraEnv excluded)."""
    names: set[str] = set()
    for value_set in VALUE_SETS:
        values = load_values(value_set)
        rendered = render(values)
        names |= set(rendered.env(component)) - set(values.get(component, {}).get("env", {}))
    token = merged(load_values("minimal"), {"secrets": {"natsToken": "t"}, "nats": {"auth": {"method": "token"}}})
    return names | set(render(token).env(component))


@pytest.mark.parametrize("component, reads", [("gateway", GATEWAY_READS), ("bridge", BRIDGE_READS)])
def test_env_names_are_exactly_what_the_binaries_read(render, component, reads):
    typed = rendered_env_names(render, component)
    by_name = set(SCHEMA["properties"][component]["properties"]["env"]["propertyNames"]["enum"])
    assert typed <= reads, f"the chart sets variables {component} never reads: {sorted(typed - reads)}"
    assert by_name <= reads, f"values.schema.json accepts {component} variables it never reads: {sorted(by_name - reads)}"
    # GATEWAY_INSTANCE_ID defaults to the pod name and may be overridden through env.
    assert not (typed & by_name) - {"GATEWAY_INSTANCE_ID"}, f"settable two ways (typed key and env): {sorted(typed & by_name)}"
    missing = reads - typed - by_name
    assert not missing, f"{component} variables no value reaches (add a typed key or the schema's env enum): {sorted(missing)}"


def leaf_keys(values, prefix=""):
    """Dotted keys of values.yaml down to scalars, lists and empty maps."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith(("resources", "SecurityContext", "securityContext", "strategy", "behavior", "Probe", "secrets.keys")):
            yield from leaf_keys(value, path + ".")
        else:
            yield path


def test_readme_documents_every_value():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    readme = (CHART_DIR / "README.md").read_text()
    missing = [key for key in leaf_keys(values) if f"`{key}`" not in readme]
    assert not missing, f"README.md values table lacks: {missing}"
