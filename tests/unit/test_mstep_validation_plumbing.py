"""Validation-driven stopping between the coordinator and the trainer: the TrainJob asks for it when
the run has a validation split, and the per-epoch rewards of TrainDone reach the report."""

from restem.events.v1 import events_pb2 as ev

from services.coordinator import core
from services.coordinator.report import build_report, render_markdown
from shared import keys
from shared.runconfig import parse_run_config

YAML = (
    "task: {arithmetic: {train: 20, validation: 4, test: 6}}\nem: {iterations: 1}\ntraining: {patience: 2}\n"
)


def _filtered(cfg_yaml: str, splits: list[str]) -> tuple[object, ev.TrainJob]:
    cfg = parse_run_config(cfg_yaml)
    run, _ = core.new_run("demo-abc123", cfg, cfg_yaml, base_model_key="models/base")
    core.on_prepare_done(run, cfg, ev.PrepareDone(run_id=run.run_id), splits)
    for split in splits:
        core.on_eval_done(run, cfg, ev.EvalDone(iteration=0, split=split), splits, ["t1", "t2"])
    for shard in range(run.iterations[-1].shards_total):
        core.on_sample_done(run, cfg, ev.SampleDone(iteration=1, shard=shard, num_samples=8))
        core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=shard, num_samples=8, num_correct=1))
    stats = core.FilterStats(
        samples=8, correct=1, problems_total=2, problems_solved=1, kept=1, duplicates_dropped=0
    )
    decision = core.on_filtered(run, cfg, 1, stats, splits)
    return run, decision.jobs[0].message


def test_the_train_job_asks_for_validation_stopping_when_there_is_a_validation_split() -> None:
    _, job = _filtered(YAML, {"validation": 32, "test": 64})
    assert job.HasField("validation")
    v = job.validation
    assert v.dataset_key == keys.dataset_key("demo-abc123", "validation") and v.task == "arithmetic"
    assert job.params.patience == 2 and v.params.greedy and v.params.n == 1 and v.params.stop_regex
    assert v.prompt_format.chat_template  # rendered like the evaluator renders validation prompts
    _, no_split = _filtered(YAML, {"test": 64})
    assert not no_split.HasField("validation")
    _, off = _filtered(
        YAML.replace("patience: 2", "validation_stopping: false"), {"validation": 32, "test": 64}
    )
    assert not off.HasField("validation")


def test_per_epoch_validation_rewards_reach_the_report() -> None:
    cfg = parse_run_config(YAML)
    run, _ = _filtered(YAML, {"validation": 32, "test": 64})
    done = ev.TrainDone(
        iteration=1,
        checkpoint_key="ck1",
        steps=4,
        validation_rewards=[0.25, 0.5, 0.25],
        best_epoch=2,
        epochs=3,
    )
    core.on_train_done(run, cfg, done, {"validation": 32, "test": 64})
    report = build_report(run)
    assert report["iterations"][1]["train"]["validation_rewards"] == [0.25, 0.5, 0.25]
    assert "- iteration 1: 25.0 %, **50.0 %**, 25.0 %" in render_markdown(report)
