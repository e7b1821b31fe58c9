from pathlib import Path

import pytest

from services.coordinator.config import CoordinatorConfig
from services.evaluator.config import EvaluatorConfig
from services.sampler.config import SamplerConfig
from services.trainer.config import TrainerConfig
from services.verifier.config import VerifierConfig
from shared.configio import ConfigError, load_service_config
from shared.infra import StoreConfig
from shared.runconfig import FRACTION_REWARD_TASKS, RunConfig, load_run_config, parse_run_config
from shared.tasks import CODE_TASKS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_parses(path):
    # A stale key in a shipped config breaks a user's first run with nothing else to catch it.
    cfg = load_run_config(path)
    assert isinstance(cfg, RunConfig)


def test_demo_config_matches_the_reference_setting():
    cfg = load_run_config(ROOT / "examples" / "arithmetic-demo.yaml")
    assert (cfg.sampling.n, cfg.sampling.top_k, cfg.sampling.temperature) == (8, 40, 0.7)
    assert (cfg.em.cutoff, cfg.training.epochs, cfg.training.learning_rate) == (4, 2, 2e-5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("em: {cutof: 3}", r"em.cutof: unknown field"),
        ("em: {cutoff: 0}", r"em.cutoff: Input should be greater than or equal to 1 \(got 0\)"),
        ("sampling: {n: 0}", r"sampling.n: Input should be greater than or equal to 1"),
        ("sampling: {n: many}", r"sampling.n: Input should be a valid integer"),
        (
            "task: {name: chess}",
            r"task.name: Input should be 'arithmetic', 'gsm8k', 'math', 'apps' or 'humaneval'",
        ),
        ("task: {name: gsm8k}", r"task.files is required for task 'gsm8k'"),
        ("training: {learning_rate: 0}", r"training.learning_rate: Input should be greater than 0"),
        ("name: Bad_Name", r"name: String should match pattern"),
        ("- a\n- b", r"must be a YAML mapping"),
        ("task: [unclosed", r"is not valid YAML"),
        ("task: {arithmetic: {train: 900, test: 900}}", r"only allow 810"),
        ("em: {reward: partial}", r"em.reward: Input should be 'binary' or 'fraction_of_tests'"),
        (
            "em: {reward: fraction_of_tests}",
            r"em.reward: fraction_of_tests needs a task with tests \(apps, humaneval\), not 'arithmetic'",
        ),
        ("em: {min_reward: 0.5}", r"em.min_reward \(0.5\) changes nothing with em.reward: binary"),
        ("em: {min_reward: 0}", r"em.min_reward: Input should be greater than 0"),
        ("em: {min_reward: 1.5}", r"em.min_reward: Input should be less than or equal to 1"),
    ],
)
def test_bad_run_configs_name_the_field(text, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_run_config(text, source="test.yaml")


def test_empty_run_config_gets_defaults():
    cfg = parse_run_config("")
    assert cfg.task.name == "arithmetic" and cfg.em.cutoff == 4
    assert (cfg.em.reward, cfg.em.min_reward) == ("binary", 1.0)  # the paper's reward


@pytest.mark.parametrize("task", CODE_TASKS)
def test_graded_rewards_are_for_the_tasks_with_tests(task):
    files = "{train: t.jsonl, test: t.jsonl}"
    cfg = parse_run_config(
        f"task: {{name: {task}, files: {files}}}\nem: {{reward: fraction_of_tests, min_reward: 0.5}}"
    )
    assert (cfg.em.reward, cfg.em.min_reward) == ("fraction_of_tests", 0.5)
    for other in ("gsm8k", "math"):
        with pytest.raises(ConfigError, match=f"em.reward: fraction_of_tests .* not '{other}'"):
            parse_run_config(f"task: {{name: {other}, files: {files}}}\nem: {{reward: fraction_of_tests}}")
    assert FRACTION_REWARD_TASKS == CODE_TASKS  # the config's list is the verifier's code tasks


@pytest.mark.parametrize(
    "model", [CoordinatorConfig, SamplerConfig, VerifierConfig, TrainerConfig, EvaluatorConfig]
)
def test_service_configs_have_defaults_and_docstrings(model):
    model()
    source = Path(__import__(model.__module__, fromlist=["x"]).__file__).read_text()
    for name in model.model_fields:
        assert f"{name}:" in source
        # every field is followed by its docstring
        line = source[source.index(f"    {name}:") :].splitlines()[1].strip()
        assert line.startswith('"""'), f"{model.__name__}.{name} has no docstring"


def test_service_config_env_overrides_are_derived_from_fields(tmp_path):
    f = tmp_path / "sampler.yaml"
    f.write_text("max_batch_sequences: 16\nnats: {url: 'nats://h:1'}\n")
    env = {"RESTEM_SAMPLER__NATS__URL": "nats://other:2", "RESTEM_SAMPLER__MAX_DELIVER": "7"}
    cfg = load_service_config(SamplerConfig, f, env_prefix="RESTEM_SAMPLER", environ=env)
    assert (cfg.nats.url, cfg.max_deliver, cfg.max_batch_sequences) == ("nats://other:2", 7, 16)
    with pytest.raises(ConfigError, match="max_deliver: Input should be a valid integer"):
        load_service_config(
            SamplerConfig, f, env_prefix="RESTEM_SAMPLER", environ={"RESTEM_SAMPLER__MAX_DELIVER": "x"}
        )
    with pytest.raises(ConfigError, match="does not exist"):
        load_service_config(SamplerConfig, tmp_path / "nope.yaml", env_prefix="RESTEM_SAMPLER", environ={})


def test_s3_store_without_credentials_says_what_to_set(monkeypatch):
    monkeypatch.delenv("RESTEM_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("RESTEM_S3_SECRET_KEY", raising=False)
    with pytest.raises(ValueError, match="RESTEM_S3_ACCESS_KEY"):
        StoreConfig(kind="s3")
    monkeypatch.setenv("RESTEM_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("RESTEM_S3_SECRET_KEY", "sk-secret")
    cfg = StoreConfig(kind="s3")
    assert "sk-secret" not in repr(cfg)
