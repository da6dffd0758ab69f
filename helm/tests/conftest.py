"""Shared helpers of the chart tests: load the chart with helm-python-sdk (Helm 4 as a library,
offline), render it with a named value set from values/, and look objects up.

Run: PYTHONPATH=.tools/chart-py python3 -m pytest helm/tests (deploy/install-deps.sh installs
helm/tests/requirements.txt there).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "realtime-gateway"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "rt"
NAMESPACE = "prod"
# The Kubernetes version the rendered objects are validated against (kubernetes-validate ships
# the schemas) and the chart is linted for. 1.30 is the first with the preStop sleep action on
# by default.
KUBE_VERSION = "1.30.0"

VALUE_SETS = sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, `override` wins (how Helm combines -f files)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Rendered:
    """The objects of one render, by kind and name, plus NOTES.txt."""

    def __init__(self, manifests: dict[str, str]):
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.get("Deployment", f"{RELEASE}-realtime-gateway-{component}")

    def container(self, component: str) -> dict[str, Any]:
        containers = self.deployment(component)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    def env(self, component: str) -> dict[str, dict[str, Any]]:
        """Container env by name (each entry as rendered); names must be unique."""
        entries = self.container(component).get("env", [])
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"duplicate env names in {component}: {names}"
        return {e["name"]: e for e in entries}


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    def _render(values: dict[str, Any] | None = None) -> Rendered:
        return Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True))

    return _render


def seconds(duration: str) -> float:
    """The binaries' duration syntax: plain seconds or ms/s/m/h."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", duration)
    assert match, f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


def rust_env_names(relative: str) -> set[str]:
    """Every `pub const NAME: &str = "NAME";` of a Rust source file."""
    text = (ROOT / relative).read_text()
    return set(re.findall(r'pub const [A-Z0-9_]+: &str = "([A-Z0-9_]+)";', text))


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
