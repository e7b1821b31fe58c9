"""A code task end to end: APPS-style problems whose samples run against their tests in the
verifier's sandbox pool, through the real local stack and SmolLM2-135M on CPU.

SmolLM2 reliably writes the two call-based functions of examples/data/apps-tiny-train.jsonl, so the
iteration keeps real, test-passing programs and the M-step trains on them. Accuracy is not asserted
here (ten problems say little); the plumbing and every verdict's provenance are.

The run is also watched as an operator and a researcher would: every service's /metrics is scraped
while it runs and must count exactly its work, the services log JSON lines carrying the run's ids,
and the run is tracked in a real MLflow server and in W&B's offline mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient
from shared.client.stack import Stack, down, kill_service, restart_nats, start_service, up
from shared.store import LocalStore
from shared.tasks import loads_jsonl
from tests.fixtures.mlflow import MlflowServer
from tests.fixtures.scrape import Samples, scrape, value

pytestmark = pytest.mark.e2e
DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
TRAIN = ("sum-two", "add-fn", "is-even", "double")
CONFIG = """
name: e2e-code
task:
  name: apps
  files: {{train: {train}, test: {test}}}
em: {{iterations: 1, cutoff: 2, shard_size: 2}}
sampling: {{n: 4, max_new_tokens: 128, seed: 1}}
training: {{epochs: 1, batch_size: 4, max_seq_len: 768}}
evaluation: {{splits: [test], samples: 2}}
tracking:
  mlflow: {{tracking_uri: "{mlflow}", experiment: e2e-code}}
  wandb: {{project: restem-e2e, mode: offline, dir: {wandb}}}
"""


@dataclass
class Finished:
    run: pb.Run
    store: LocalStore
    stack: Stack
    during: dict[str, list[Samples]]  # scrapes taken while the run was running, per service
    after: dict[str, Samples]
    mlflow_uri: str
    wandb_dir: Path


def _scrape_all(stack: Stack) -> dict[str, Samples]:
    return {name: scrape(svc["metrics"]) for name, svc in stack.info["services"].items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("code-stack")
    train = state / "train.jsonl"  # four of the example's problems: two SmolLM2 solves, two it rarely does
    lines = (DATA / "apps-tiny-train.jsonl").read_text().splitlines()
    train.write_text("".join(line + "\n" for line in lines if json.loads(line)["id"] in TRAIN))
    stack = up(state, log_format="json", auth=True)  # auth: the token must never reach a log line
    wandb_dir = state / "wandb-runs"
    config = CONFIG.format(
        train=train, test=DATA / "apps-tiny-test.jsonl", mlflow=mlflow_server.uri, wandb=wandb_dir
    )
    during: dict[str, list[Samples]] = {name: [] for name in stack.info["services"]}
    try:
        with RunClient(stack.coordinator, token=stack.token_file.read_text().strip()) as client:  # type: ignore[union-attr]
            run = client.start_run(config)
            for last in client.watch_run(run.run_id, timeout_s=900):
                if last.status == pb.RUN_STATUS_RUNNING:
                    for name, samples in _scrape_all(stack).items():
                        during[name].append(samples)
        after = _settled(stack)
        yield Finished(
            last,
            LocalStore(Path(stack.info["store"]["root"])),
            stack,
            during,
            after,
            mlflow_server.uri,
            wandb_dir,
        )
    finally:
        down(state)


def _settled(stack: Stack) -> dict[str, Samples]:
    """The scrapes once the coordinator's run gauge (sampled every 5 s) shows the run ended."""
    for _ in range(60):
        after = _scrape_all(stack)
        if value(after["coordinator"], "restem_coordinator_runs", status="succeeded") == 1:
            return after
        time.sleep(0.5)
    return after


def test_code_run_keeps_programs_that_pass_their_tests(finished) -> None:  # type: ignore[no-untyped-def]
    run, store = finished.run, finished.store
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.error
    verdicts = [
        v for shard in range(2) for v in loads_jsonl(store.get_bytes(keys.verdicts_key(run.run_id, 1, shard)))
    ]
    assert len(verdicts) == 16 and {v["checker_version"] for v in verdicts} == {"code-1"}
    passed = [v for v in verdicts if v["correct"]]
    assert passed and all(v["rule"] == "all-tests-passed" for v in passed)
    assert {v["problem_id"] for v in passed} >= {"add-fn", "is-even"}
    failed_rules = {v["rule"] for v in verdicts if not v["correct"]}
    assert failed_rules and all(r.startswith("test-") or r in ("invalid-argument",) for r in failed_rules)
    it = run.iterations[1]
    assert it.kept > 0 and it.train.steps > 0 and not it.train.skipped


def test_code_eval_reports_pass_at_k_without_majority_vote(finished) -> None:  # type: ignore[no-untyped-def]
    run, store = finished.run, finished.store
    rows = loads_jsonl(store.get_bytes(keys.eval_key(run.run_id, 1, "test")))
    assert len(rows) == 4 and all(
        r["rule"] == "all-tests-passed" or r["rule"].startswith("test-") for r in rows
    )
    assert all(len(r["samples"]) == 2 for r in rows)
    (test,) = [e for e in run.iterations[1].evals if e.split == "test"]
    metrics = dict(test.metrics)
    assert "pass@2" in metrics and not any(k.startswith("maj@") for k in metrics)


def test_every_service_metrics_count_exactly_the_runs_work(finished) -> None:  # type: ignore[no-untyped-def]
    run, m = finished.run, finished.after
    it = run.iterations[1]
    evals = [e for i in run.iterations for e in i.evals]
    problems = sum(e.num_problems for e in evals)  # 4 test problems x (base + iteration 1)
    eval_samples = problems * (1 + 2)  # greedy + evaluation.samples per problem
    assert value(m["sampler"], "restem_sampler_samples_total") == it.samples == 4 * 4
    assert value(m["sampler"], "restem_sampler_generated_tokens_total") == it.tokens_generated
    assert value(m["sampler"], "restem_sampler_finish_reasons_total") == it.samples
    assert value(m["sampler"], "restem_jobs_completed_total", job_type="sample") == it.shards_total == 2
    # code task: every sample and every evaluation answer is one program run against its tests
    programs = value(m["verifier"], "restem_verifier_programs_total")
    assert (
        programs
        == it.samples + eval_samples
        == value(m["verifier"], "restem_verifier_verdicts_total", task="apps")
    )
    assert value(m["verifier"], "restem_verifier_programs_total", status="passed") >= it.correct_samples > 0
    assert value(m["verifier"], "restem_jobs_completed_total", job_type="verify") == 2
    assert value(m["verifier"], "restem_verifier_sandbox_workers", pool="code", state="total") >= 1
    assert value(m["evaluator"], "restem_evaluator_problems_total", split="test") == problems == 8
    assert value(m["evaluator"], "restem_evaluator_samples_total", split="test") == eval_samples
    assert value(m["evaluator"], "restem_jobs_completed_total", job_type="eval") == len(evals) == 2
    assert value(m["trainer"], "restem_jobs_completed_total", job_type="prepare") == 1
    assert value(m["trainer"], "restem_jobs_completed_total", job_type="train") == 1
    assert value(m["trainer"], "restem_trainer_steps_total") == it.train.steps > 0
    assert value(m["trainer"], "restem_trainer_tokens_total") == it.train.tokens
    assert value(m["trainer"], "restem_trainer_loss") == pytest.approx(it.train.loss_last)
    c = m["coordinator"]
    assert value(c, "restem_coordinator_events_total", event="sample_done") == 2
    assert value(c, "restem_coordinator_events_total", event="eval_done") == 2
    assert value(c, "restem_coordinator_events_total", event="train_done") == 1
    assert value(c, "restem_coordinator_phase_seconds_count", phase="training") == 1
    assert value(c, "restem_queue_pending_jobs") == value(c, "restem_queue_unacked_jobs") == 0
    for name, samples in m.items():
        assert value(samples, "restem_service_info", service=name) == 1, name
        assert value(samples, "restem_nats_connected") == 1, name
        assert value(samples, "restem_store_bytes_total", direction="write") > 0, name
        assert value(samples, "restem_jobs_failed_total") == 0, name


def test_metrics_were_served_while_the_run_ran(finished) -> None:  # type: ignore[no-untyped-def]
    for name, scrapes in finished.during.items():
        assert scrapes, f"{name} was never scraped while the run was running"
        assert all(value(s, "restem_service_info", service=name) == 1 for s in scrapes)
    seen = [value(s, "restem_sampler_samples_total") for s in finished.during["sampler"]]
    assert seen == sorted(seen) and seen[-1] <= value(
        finished.after["sampler"], "restem_sampler_samples_total"
    )


def test_json_logs_carry_the_run_and_job_ids_and_no_secret(finished) -> None:  # type: ignore[no-untyped-def]
    run, stack = finished.run, finished.stack
    token = stack.token_file.read_text().strip()
    for name, svc in stack.info["services"].items():
        lines = [line for line in Path(svc["log"]).read_text().splitlines() if line.strip()]
        assert all(token not in line for line in lines), f"{name} logged the API token"
        docs = [json.loads(line) for line in lines]  # raises on any line that is not one JSON object
        assert all(d["service"] == name and d["level"] and d["msg"] is not None for d in docs)
        about_run = [d for d in docs if d.get("run_id") == run.run_id]
        assert about_run, f"{name} logged nothing with the run's id"
        # every line about the run says which phase; a worker's also which job, type and iteration
        assert all(d.get("phase") for d in about_run if "job_id" in d), name
        if name != "coordinator":
            assert any(d.get("job_id") and d.get("job_type") and "iteration" in d for d in about_run), name


def test_the_run_is_tracked_in_mlflow_and_wandb(finished) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    from tests.fixtures.wandb_log import history

    run, it = finished.run, finished.run.iterations[1]
    client = MlflowClient(finished.mlflow_uri)
    experiment = client.get_experiment_by_name("e2e-code")
    (tracked,) = client.search_runs([experiment.experiment_id], f"tags.`restem.run_id` = '{run.run_id}'")
    rid = tracked.info.run_id
    assert tracked.info.status == "FINISHED" and tracked.data.params["em.iterations"] == "1"
    test_pass = [(x.step, x.value) for x in client.get_metric_history(rid, "test/pass_at_1")]
    assert test_pass == [
        (i.iteration, e.pass_at_1) for i in run.iterations for e in i.evals if e.split == "test"
    ]
    assert [x.step for x in client.get_metric_history(rid, "test/sampled/pass_at_2")] == [0, 1]
    assert client.get_metric_history(rid, "filter/kept")[0].value == it.kept
    loss = client.get_metric_history(rid, "m_step_1/loss")
    assert [x.step for x in loss] == list(range(1, it.train.steps + 1))
    assert loss[-1].value == pytest.approx(it.train.loss_last)
    artifacts = {a.path for folder in ("config", "report") for a in client.list_artifacts(rid, folder)}
    assert {"config/run.yaml", "report/report.md", "report/report.json"} <= artifacts
    with RunClient(finished.stack.coordinator, token=finished.stack.token_file.read_text().strip()) as rc:
        report = rc.report(run.run_id)
    links = {t["tracker"]: t for t in report["tracking"]}
    assert links["mlflow"]["run_id"] == rid and links["mlflow"]["url"].endswith(f"/runs/{rid}")
    (em_dir,) = finished.wandb_dir.glob(f"wandb/offline-run-*-{run.run_id}")
    (m1_dir,) = finished.wandb_dir.glob(f"wandb/offline-run-*-{run.run_id}-m1")
    assert links["wandb"]["location"] == str(em_dir)
    assert [(r["_step"], r["test/pass@1"]) for r in history(em_dir)] == test_pass
    steps = history(m1_dir)
    assert len(steps) == it.train.steps and steps[-1]["m_step_1/loss"] == pytest.approx(it.train.loss_last)


# --- provenance, on the same run: lineage, a changed checker, a fork, a lost NATS volume ----------
# These run last and in order: they restart the verifier with another checker and wipe NATS.

BUMP = Path(__file__).resolve().parents[1] / "fixtures" / "checker_bump"


def _client(finished: Finished) -> RunClient:
    return RunClient(finished.stack.coordinator, token=finished.stack.token_file.read_text().strip())  # type: ignore[union-attr]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_lineage_walks_the_run_and_detects_a_tampered_artifact(finished) -> None:  # type: ignore[no-untyped-def]
    run, store = finished.run, finished.store
    it = run.iterations[1]
    with _client(finished) as client:
        resp = client.lineage(run.run_id, check=True)
        doc = json.loads(resp.lineage_json)
        assert list(resp.mismatches) == []
        # base + 2 sample shards + 2 verdict shards + kept set + checkpoint
        assert resp.artifacts_checked == 7
        (i1,) = doc["iterations"]
        assert i1["policy"] == {
            "key": run.base_model_key,
            "sha256": _sha(store.get_bytes(f"{run.base_model_key}/MANIFEST.json")),
        }
        assert (
            doc["base_model"]["sha256"] == i1["policy"]["sha256"]
            and doc["base_model"]["source"] == run.model_source
        )
        assert i1["verdicts"]["checker_versions"] == ["code-1"] == doc["checker_versions"]
        for part, key_of in (("samples", keys.samples_key), ("verdicts", keys.verdicts_key)):
            assert i1[part]["sha256"] == [_sha(store.get_bytes(key_of(run.run_id, 1, s))) for s in range(2)]
        assert i1["kept"] == {
            "key": it.kept_key,
            "sha256": _sha(store.get_bytes(it.kept_key)),
            "count": it.kept,
        }
        assert i1["checkpoint"]["sha256"] == _sha(store.get_bytes(f"{it.checkpoint_key}/MANIFEST.json"))
        assert i1["m_step"]["settings"]["epochs"] == 1 and i1["m_step"]["steps"] == it.train.steps
        samples = loads_jsonl(store.get_bytes(keys.samples_key(run.run_id, 1, 0)))
        assert {s["policy_key"] for s in samples} == {it.policy_key}  # every sample names its policy
        # One changed byte in a verdict shard, one in a checkpoint file: both named, then restored.
        shard = keys.verdicts_key(run.run_id, 1, 1)
        weights = next(k for k in store.list(it.checkpoint_key + "/") if k.endswith("config.json"))
        originals = {k: store.get_bytes(k) for k in (shard, weights)}
        try:
            for key, data in originals.items():
                store.put_bytes(key, data + b" ")
            bad = client.lineage(run.run_id, check=True).mismatches
            assert len(bad) == 2, bad
            assert "iteration 1 verdicts shard 1" in bad[0] or "iteration 1 verdicts shard 1" in bad[1]
            assert any("iteration 1 checkpoint" in m and weights in m for m in bad)
        finally:
            for key, data in originals.items():
                store.put_bytes(key, data)
    stack, token = finished.stack, str(finished.stack.token_file)
    cli = [sys.executable, "-m", "shared.client", "--address", stack.coordinator, "--token-file", token]
    out = subprocess.run(
        [*cli, "lineage", run.run_id, "--check"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "checked 7 artifacts: all match" in out.stdout, out.stderr
    assert f"checkpoint  {it.checkpoint_key}" in out.stdout


def test_reverify_with_a_changed_checker_shows_the_flips(finished) -> None:  # type: ignore[no-untyped-def]
    run, store, stack = finished.run, finished.store, finished.stack
    before = [v for s in range(2) for v in loads_jsonl(store.get_bytes(keys.verdicts_key(run.run_id, 1, s)))]
    flipped = [v["sample_id"] for v in before if v["correct"] and v["problem_id"] == "add-fn"]
    assert flipped, "the fixture's changed rule needs passing add-fn samples"
    kill_service(stack, "verifier", grace_s=15.0)
    env = {"PYTHONPATH": f"{BUMP}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "RESTEM_CHECKER_BUMP": "1"}
    with mock.patch.dict(os.environ, env):  # what the new verifier process inherits
        start_service(stack, "verifier")
    with _client(finished) as client:
        number = client.reverify(run.run_id).number
        deadline = time.monotonic() + 300
        while not (rv := client.get_run(run.run_id).reverifications[number - 1]).done:
            assert time.monotonic() < deadline, "reverification did not finish"
            time.sleep(0.5)
    (part,) = rv.iterations
    assert list(part.checkers_before) == ["code-1"] and list(part.checkers_after) == ["code-2"]
    assert (part.flipped_to_wrong, part.flipped_to_correct) == (len(flipped), 0)
    assert part.kept_sets_differ == 1 and part.kept < run.iterations[1].kept
    changes = json.loads(store.get_bytes(rv.changes_key))
    assert sorted(f["sample_id"] for f in changes["iterations"][0]["flips"]) == sorted(flipped)
    assert changes["iterations"][0]["problems_kept_differ"] == ["add-fn"]
    # the run itself is untouched: its verdicts and results are what they were
    assert [
        v for s in range(2) for v in loads_jsonl(store.get_bytes(keys.verdicts_key(run.run_id, 1, s)))
    ] == before


def test_a_fork_survives_a_lost_nats_volume_and_names_both_checkers(finished) -> None:  # type: ignore[no-untyped-def]
    run, stack = finished.run, finished.stack
    with _client(finished) as client:
        fork = client.start_run("", from_run=run.run_id, from_iteration=1)
        assert fork.forked_from == run.run_id and fork.forked_reverification == 1
        deadline = time.monotonic() + 300
        while (now := client.get_run(fork.run_id)).phase != pb.PHASE_TRAINING:
            assert now.status == pb.RUN_STATUS_RUNNING and time.monotonic() < deadline, now.error
            time.sleep(0.2)
        restart_nats(stack, wipe=True)  # the NATS volume is lost mid-way through the fork's M-step
        recovered = client.recover()
        assert {r.run_id for r in recovered.recovered} == {run.run_id, fork.run_id}
        assert client.get_run(run.run_id).status == pb.RUN_STATUS_SUCCEEDED
        last = list(client.watch_run(fork.run_id, timeout_s=600))[-1]
        assert last.status == pb.RUN_STATUS_SUCCEEDED, last.error
        assert client.report(run.run_id)["run_id"] == run.run_id  # the recovered finished run reports
        doc = json.loads(client.lineage(fork.run_id).lineage_json)
    (i1,) = doc["iterations"]
    assert doc["forked_from"] == {"run_id": run.run_id, "iteration": 1, "reverification": 1}
    assert i1["verdicts"]["checker_versions"] == ["code-2"]
    assert i1["replaced_verdicts"]["checker_versions"] == ["code-1"]
    assert i1["samples"]["prefix"] == keys.samples_prefix(run.run_id, 1)  # the source's samples
    assert i1["kept"]["count"] == last.iterations[1].kept < run.iterations[1].kept
    assert i1["checkpoint"]["key"] == keys.checkpoint_key(fork.run_id, 1)
