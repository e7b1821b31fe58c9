"""Offline checks of the chart's observability: metrics ports, ServiceMonitor, Grafana dashboard, logs.

Rendered with Helm's own library as in test_chart.py. kubernetes-validate has no schema for the
prometheus-operator CRD, so the ServiceMonitor's fields are checked here against the ones the
operator defines, and its selector is evaluated against the rendered Services. The dashboard's
PromQL may only name metrics of the catalogue in tests/chart_helpers.py (METRIC_NAMES).
"""

from __future__ import annotations

import copy
import json
import re

import helm_python
import kubernetes_validate
import pytest
import yaml

from shared.configio import load_service_config
from tests.chart_helpers import (
    CHART,
    METRIC_NAMES,
    SERVICES,
    by_kind,
    component,
    config_model,
    load_values,
    manifests,
    render,
    service_config_text,
)

KUBE_VERSION = "1.33.0"
DASHBOARD = CHART / "dashboards" / "restem.json"
# The histograms of METRIC_NAMES: only these have _bucket/_sum/_count series.
HISTOGRAMS = frozenset(
    {
        "restem_job_duration_seconds",
        "restem_store_request_seconds",
        "restem_coordinator_phase_seconds",
        "restem_coordinator_filter_seconds",
        "restem_sampler_generate_seconds",
        "restem_trainer_step_seconds",
    }
)
# What the dashboard must show (one series each at least): the pipeline end to end.
DASHBOARD_MUST_USE = frozenset(
    {
        "restem_queue_pending_jobs",
        "restem_queue_unacked_jobs",
        "restem_jobs_completed_total",
        "restem_jobs_failed_total",
        "restem_job_duration_seconds",
        "restem_sampler_generated_tokens_total",
        "restem_verifier_programs_total",
        "restem_verifier_verdicts_total",
        "restem_verifier_sandbox_workers",
        "restem_trainer_tokens_total",
        "restem_trainer_loss",
        "restem_trainer_learning_rate",
        "restem_trainer_mfu_ratio",
        "restem_evaluator_problems_total",
        "restem_coordinator_runs",
        "restem_coordinator_phase_seconds",
        "restem_store_request_seconds",
        "restem_store_bytes_total",
        "restem_store_errors_total",
        "restem_nats_reconnects_total",
    }
)
# ServiceMonitor fields of monitoring.coreos.com/v1 that this chart may use (a subset of the CRD).
SERVICE_MONITOR_SPEC = {
    "selector",
    "namespaceSelector",
    "jobLabel",
    "endpoints",
    "targetLabels",
    "podTargetLabels",
}
SERVICE_MONITOR_ENDPOINT = {
    "port",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "relabelings",
    "metricRelabelings",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def _docs(**overrides):
    return manifests(render(load_values(overrides=overrides)))


def _deployments(docs):
    return {component(d): d for d in by_kind(docs, "Deployment").values()}


def _seconds(duration: str) -> float:
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector evaluated as the API server does."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


# ---- ports and service config ----


@pytest.mark.parametrize("values_file", [(), ("values-gpu.yaml",), ("ci/external-values.yaml",)])
def test_every_service_container_and_service_has_the_metrics_port(values_file):
    docs = manifests(render(load_values(*values_file)))
    deployments = _deployments(docs)
    assert set(deployments) == set(SERVICES)
    for svc, doc in deployments.items():
        ports = {p["name"]: p for p in doc["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}, svc
        assert ports["grpc"]["containerPort"] != ports["metrics"]["containerPort"]
    services = by_kind(docs, "Service")
    for svc in SERVICES:
        ports = {p["name"]: p for p in services[f"restem-{svc}"]["spec"]["ports"]}
        assert ports["metrics"]["port"] == 9090 and ports["metrics"]["targetPort"] == "metrics", svc
    # The headless Service is for gRPC clients only: a metrics port there would make
    # endpoint discovery scrape every verifier pod twice.
    assert {p["name"] for p in services["restem-verifier-headless"]["spec"]["ports"]} == {"grpc"}


def test_metrics_port_is_configurable_and_may_not_be_the_grpc_port():
    docs = _docs(metrics={"port": 9100})
    for svc, doc in _deployments(docs).items():
        ports = {p["name"]: p for p in doc["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert ports["metrics"]["containerPort"] == 9100, svc
        assert yaml.safe_load(service_config_text(docs, svc))["metrics"]["port"] == 9100
    with pytest.raises(helm_python.HelmRenderError, match=r"metrics.port=50051 is also grpc.port"):
        render(load_values(overrides={"metrics": {"port": 50051}}))


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_each_service_config_serves_metrics_and_logs_in_the_chart_format(log_format, tmp_path, monkeypatch):
    # As the pod starts: the mounted file, loaded by the service's own config loader.
    docs = _docs(logFormat=log_format)
    for var, value in (
        ("RESTEM_S3_ACCESS_KEY", "a"),
        ("RESTEM_S3_SECRET_KEY", "s"),
        ("RESTEM_API_TOKEN", "t"),
    ):
        monkeypatch.setenv(var, value)
    for svc, doc in _deployments(docs).items():
        path = tmp_path / f"{svc}.yaml"
        path.write_text(service_config_text(docs, svc))
        cfg = load_service_config(config_model(svc), path, env_prefix=f"RESTEM_{svc.upper()}", environ={})
        ports = {p["name"]: p for p in doc["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert cfg.metrics.port == ports["metrics"]["containerPort"], svc
        assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port_file is None
        assert cfg.log_format == log_format


def test_json_logs_are_the_chart_default():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["logFormat"] == "json" and values["metrics"]["port"] == 9090
    assert yaml.safe_load(service_config_text(_docs(), "coordinator"))["log_format"] == "json"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"logFormat": "xml"}, r"/logFormat"),
        ({"sampler": {"config": {"metrics": {"port": 1}}}}, r"additional properties 'metrics' not allowed"),
        ({"trainer": {"config": {"log_format": "text"}}}, r"additional properties 'log_format' not allowed"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, r"/metrics/serviceMonitor/interval"),
        ({"metrics": {"prot": 9090}}, r"additional properties 'prot' not allowed"),
        ({"metrics": {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}}, r"grafana_dashboard"),
    ],
)
def test_bad_metrics_values_fail_at_render_time(overrides, message):
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError), match=message):
        render(load_values(overrides=overrides))


# ---- ServiceMonitor ----


def test_service_monitor_renders_only_when_enabled():
    assert not by_kind(_docs(), "ServiceMonitor")
    assert not any("servicemonitor" in path for path, text in render(load_values()).items() if text.strip())
    assert len(by_kind(_docs(metrics={"serviceMonitor": {"enabled": True}}), "ServiceMonitor")) == 1


def test_service_monitor_scrapes_every_service_pod_once():
    docs = _docs(
        metrics={
            "serviceMonitor": {
                "enabled": True,
                "interval": "15s",
                "scrapeTimeout": "5s",
                "labels": {"release": "kps"},
            }
        }
    )
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "restem"
    spec = monitor["spec"]
    # Only fields the CRD defines (the API server would prune or reject others).
    assert set(spec) <= SERVICE_MONITOR_SPEC, set(spec) - SERVICE_MONITOR_SPEC
    assert spec["namespaceSelector"] == {"matchNames": ["ml"]}
    assert len(spec["endpoints"]) == 1
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT, set(endpoint) - SERVICE_MONITOR_ENDPOINT
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("metrics", "/metrics", "http")
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")

    services = by_kind(docs, "Service")
    selected = {
        name: s for name, s in services.items() if _selects(spec["selector"], s["metadata"]["labels"])
    }
    scraped = {
        name: s for name, s in selected.items() if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    }
    assert set(scraped) == {f"restem-{svc}" for svc in SERVICES}
    assert not any(component(s) in ("nats", "minio") for s in selected.values())
    # Each service's pods sit behind exactly one scraped Service, whose metrics port is the pod's.
    for svc, deployment in _deployments(docs).items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        behind = [s for s in scraped.values() if _selects({"matchLabels": s["spec"]["selector"]}, pod_labels)]
        assert len(behind) == 1, svc
        container_ports = {
            p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        target = next(p for p in behind[0]["spec"]["ports"] if p["name"] == "metrics")["targetPort"]
        assert target in container_ports, svc
    # The job label comes from a label every scraped Service carries.
    assert all(spec["jobLabel"] in s["metadata"]["labels"] for s in scraped.values())


def test_service_monitor_defaults_are_valid_prometheus_durations():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["serviceMonitor"]
    assert values["enabled"] is False and values["labels"] == {}
    assert DURATION.match(values["interval"]) and DURATION.match(values["scrapeTimeout"])
    # Prometheus refuses a scrape timeout longer than the interval.
    assert _seconds(values["scrapeTimeout"]) <= _seconds(values["interval"])


def test_the_selector_check_can_fail():
    # A control for the test above: a selector that also picks NATS/MinIO is noticed.
    docs = _docs(metrics={"serviceMonitor": {"enabled": True}})
    selector = copy.deepcopy(next(iter(by_kind(docs, "ServiceMonitor").values()))["spec"]["selector"])
    nats = by_kind(docs, "Service")["restem-nats"]["metadata"]["labels"]
    assert not _selects(selector, nats)
    selector.pop("matchExpressions")
    assert _selects(selector, nats)


# ---- NetworkPolicy ----


def test_metrics_port_is_open_to_the_configured_scrapers_only():
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    docs = _docs(metrics={"allowFrom": peers})
    policies = {component(p): p["spec"] for p in by_kind(docs, "NetworkPolicy").values()}
    for svc in SERVICES:
        rules = [r for r in policies[svc]["ingress"] if {"port": 9090, "protocol": "TCP"} in r["ports"]]
        assert rules == [{"from": peers, "ports": [{"port": 9090, "protocol": "TCP"}]}], svc
        # The scrape rule opens the metrics port and nothing else; gRPC keeps its own peers.
        others = [r for r in policies[svc]["ingress"] if r not in rules]
        assert all(p["port"] != 9090 for r in others for p in r["ports"])
    assert policies["nats"]["ingress"][0]["ports"] == [{"port": 4222, "protocol": "TCP"}]


# ---- Grafana dashboard ----


def _dashboard_configmap(docs):
    maps = [d for d in by_kind(docs, "ConfigMap").values() if component(d) == "dashboard"]
    return maps[0] if maps else None


def test_dashboard_configmap_renders_only_when_enabled():
    assert _dashboard_configmap(_docs()) is None
    docs = _docs(metrics={"grafanaDashboard": {"enabled": True}})
    cm = _dashboard_configmap(docs)
    kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # the Grafana sidecar's default label
    assert cm["metadata"]["annotations"] == {"grafana_folder": "restem"}
    assert cm["data"]["restem.json"] == DASHBOARD.read_text().rstrip("\n")
    assert json.loads(cm["data"]["restem.json"])["uid"] == "restem-pipeline"
    other = _docs(metrics={"grafanaDashboard": {"enabled": True, "labels": {"dash": "yes"}, "folder": ""}})
    cm = _dashboard_configmap(other)
    # Helm merges maps: a label of one's own comes beside the default one (null removes that).
    assert cm["metadata"]["labels"]["dash"] == "yes" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]
    only = _docs(
        metrics={"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": None, "dash": "x"}}}
    )
    assert "grafana_dashboard" not in _dashboard_configmap(only)["metadata"]["labels"]


def _exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets (rows' nested panels included) and query variables."""
    out = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return out


def dashboard_problems(dashboard: dict) -> list[str]:
    """What is wrong with the dashboard's PromQL against the metric catalogue (empty: nothing)."""
    problems = []
    for expr in _exprs(dashboard):
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            problems.append(f"unbalanced brackets: {expr}")
        for match in re.finditer(r"restem_[a-z_]+", expr):
            token = match.group()
            base = re.sub(r"_(bucket|sum|count)$", "", token)
            if base != token and base not in HISTOGRAMS:
                problems.append(f"{token}: {base} is not a histogram")
            elif base == token and token in HISTOGRAMS:
                problems.append(f"{token}: a histogram has only _bucket/_sum/_count series")
            elif base not in METRIC_NAMES:
                problems.append(f"{token}: no such metric")
            before = expr[: match.start()]
            if token.endswith(("_total", "_bucket", "_sum", "_count")) and not re.search(
                r"(rate|increase)\($", before
            ):
                problems.append(f"{token}: a counter outside rate()/increase() in {expr}")
            if "label_values(" not in before[-13:] and not expr[match.end() :].startswith(
                '{namespace="$namespace"'
            ):
                problems.append(f"{token}: not filtered on $namespace in {expr}")
    return problems


def test_dashboard_is_valid_json_using_only_catalogued_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard_problems(dashboard) == []
    used = {
        re.sub(r"_(bucket|sum|count)$", "", t)
        for e in _exprs(dashboard)
        for t in re.findall(r"restem_[a-z_]+", e)
    }
    assert not DASHBOARD_MUST_USE - used, DASHBOARD_MUST_USE - used
    assert HISTOGRAMS <= METRIC_NAMES
    assert all(n.startswith("restem_") for n in METRIC_NAMES)


def test_dashboard_check_catches_misspelt_and_misused_metrics():
    for good, bad, message in [
        ("restem_sampler_generated_tokens_total", "restem_sampler_generated_token_total", "no such metric"),
        ("restem_job_duration_seconds_bucket", "restem_jobs_completed_total_bucket", "is not a histogram"),
        ("restem_job_duration_seconds_bucket", "restem_job_duration_seconds", "only _bucket/_sum/_count"),
        ("rate(restem_store_errors_total", "(restem_store_errors_total", "outside rate()/increase()"),
        ('restem_queue_pending_jobs{namespace="$namespace"}', "restem_queue_pending_jobs", "not filtered"),
        ("label_values(restem_service_info", "label_values(restem_service_infos", "no such metric"),
    ]:
        dashboard = json.loads(DASHBOARD.read_text())
        panels = [*dashboard["panels"], *dashboard["templating"]["list"]]
        targets = [t for p in panels for t in p.get("targets", [])] + [
            v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"
        ]
        hit = [t for t in targets if good in t["expr" if "expr" in t else "query"]]
        assert hit, good
        for target in hit:
            key = "expr" if "expr" in target else "query"
            target[key] = target[key].replace(good, bad)
        problems = dashboard_problems(dashboard)
        assert any(message in p for p in problems), (bad, problems)


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["id"] is None and 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["namespace"]["type"] == "query"
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["namespace"]["datasource"] == source
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == source and panel["targets"], panel["title"]
            assert all(t["datasource"] == source for t in panel["targets"]), panel["title"]
    # no two panels overlap
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        area = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, panel["title"]
        cells |= area
