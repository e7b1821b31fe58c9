import pytest

from shared.configio import ConfigError
from shared.runconfig import ArithmeticTask, TaskConfig
from shared.tasks import (
    ARITHMETIC_STOP,
    DatasetError,
    build_splits,
    check_answer,
    extract_answer,
    generate_arithmetic,
    load_jsonl_problems,
    user_message,
)


def test_arithmetic_splits_are_disjoint_sized_and_correct():
    splits = generate_arithmetic(ArithmeticTask(train=64, validation=32, test=64), seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 64, "validation": 32, "test": 64}
    questions = [p["question"] for ps in splits.values() for p in ps]
    assert len(set(questions)) == len(questions)
    ids = [p["id"] for ps in splits.values() for p in ps]
    assert len(set(ids)) == len(ids)
    for p in splits["test"]:
        a, b = p["question"].removeprefix("What is ").rstrip("?").split(" + ")
        assert int(p["answer"]) == int(a) + int(b)
        assert 10 <= int(a) <= 99 and 1 <= int(b) <= 9


def test_arithmetic_is_deterministic_per_seed():
    cfg = ArithmeticTask(train=8, validation=0, test=8)
    assert generate_arithmetic(cfg, 3) == generate_arithmetic(cfg, 3)
    assert generate_arithmetic(cfg, 3) != generate_arithmetic(cfg, 4)


def test_prompt_asks_for_the_checked_format():
    assert (
        user_message("arithmetic", {"question": "What is 47 + 8?"})
        == "What is 47 + 8? End with 'The answer is N.'"
    )


@pytest.mark.parametrize(
    ("completion", "correct", "rule"),
    [
        ("47 + 8 = 55. The answer is 55.", True, "answer-is"),
        ("The answer is 54.", False, "answer-is"),
        ("the answer is: **55**.", True, "answer-is"),
        ("55", False, "no-answer"),  # a bare number is not the requested format
        ("The answer is 54. Wait, the answer is 55.", True, "answer-is"),  # the last statement counts
        ("The answer is fifty-five.", False, "no-answer"),
        ("The answer is 55.0", True, "answer-is"),
    ],
)
def test_arithmetic_checker(completion, correct, rule):
    v = check_answer("arithmetic", "55", completion)
    assert (v.correct, v.rule) == (correct, rule)


def test_gsm8k_accepts_hash_and_answer_is_forms_with_commas():
    assert check_answer("gsm8k", "1200", "so #### 1,200").correct
    assert check_answer("gsm8k", "1200", "The answer is $1,200.").correct
    assert not check_answer("gsm8k", "1200", "#### 120").correct
    # hash-answer only exists for gsm8k: the arithmetic task is strict
    assert extract_answer("arithmetic", "#### 5") == ("", "no-answer")


def test_stop_pattern_matches_only_a_complete_answer():
    import re

    assert re.search(ARITHMETIC_STOP, "so The answer is 55. More")
    assert not re.search(ARITHMETIC_STOP, "The answer is 55")


def test_jsonl_loader_reports_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q1", "answer": "a #### 3"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:2: not valid JSON"):
        load_jsonl_problems(f, "gsm8k")
    f.write_text('{"id": "x", "question": "q", "answer": "1"}\n{"id": "x", "question": "q", "answer": "2"}\n')
    with pytest.raises(DatasetError, match="duplicate id 'x'"):
        load_jsonl_problems(f, "gsm8k")
    f.write_text('{"question": "q"}\n')
    with pytest.raises(DatasetError, match="needs 'question' and 'answer'"):
        load_jsonl_problems(f, "gsm8k")
    f.write_text("\n")
    with pytest.raises(DatasetError, match="has no problems"):
        load_jsonl_problems(f, "gsm8k")


def test_gsm8k_files_become_splits_with_reference_numbers(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "2+2?", "answer": "2+2=4\\n#### 4"}\n')
    cfg = TaskConfig(name="gsm8k", files={"train": train, "test": train})
    splits = build_splits(cfg)
    assert splits["train"][0]["answer"] == "4"
    assert splits["train"][0]["solution"].endswith("#### 4")
    assert splits["validation"] == []


def test_reference_solutions_pass_the_checker():
    from shared.tasks import reference_completion, sft_rows

    problems = generate_arithmetic(ArithmeticTask(train=5, validation=0, test=1), seed=1)["train"]
    rows = sft_rows("arithmetic", problems)
    assert len(rows) == 5
    for row, p in zip(rows, problems, strict=True):
        assert check_answer("arithmetic", p["answer"], row["completion"]).correct
        assert row["user_message"] == user_message("arithmetic", p) and "prompt" not in row
    gsm = {
        "id": "g",
        "question": "q",
        "answer": "72",
        "solution": "48/2 = <<48/2=24>>24\n24+48 = <<24+48=72>>72\n#### 72",
    }
    assert reference_completion("gsm8k", gsm) == "48/2 = 24\n24+48 = 72\nThe answer is 72."
    with pytest.raises(DatasetError, match="no gsm8k train problem has one"):
        sft_rows("gsm8k", [{"id": "x", "question": "q", "answer": "1"}])


def test_the_sft_baselines_references_are_a_seeded_subset_that_ignores_file_order():
    from shared.runconfig import parse_run_config
    from shared.tasks import reference_subset

    problems = generate_arithmetic(ArithmeticTask(train=64, validation=0, test=1), seed=1)["train"]
    quarter = reference_subset(problems, 0.25, seed=0)
    assert len(quarter) == 16 and [p["id"] for p in quarter] == [p["id"] for p in problems if p in quarter]
    assert [p["id"] for p in reference_subset(problems[::-1], 0.25, seed=0)] == [p["id"] for p in quarter][
        ::-1
    ]
    assert {p["id"] for p in reference_subset(problems, 0.25, seed=1)} != {p["id"] for p in quarter}
    assert {p["id"] for p in quarter} < {p["id"] for p in reference_subset(problems, 0.5, seed=0)}
    assert len(reference_subset(problems, 0.001, seed=0)) == 1  # never an empty SFT set
    assert reference_subset(problems, 1.0, seed=0) is problems
    with pytest.raises(ConfigError, match=r"baseline\.sft_references needs baseline\.sft: true"):
        parse_run_config("baseline: {sft_references: 0.25}")
    assert parse_run_config("baseline: {sft: true, sft_references: 0.25}").baseline.sft_references == 0.25


def test_the_committed_humaneval_split_is_the_documented_rule():
    from tests.bench.repro_code import SIZES, split_file, split_ids, split_rows, split_text

    rows = split_rows()
    for split, problems in rows.items():
        assert split_file(split).read_text() == split_text(problems), (
            f"run tests/bench/repro_code.py split ({split})"
        )
    assert {s: len(p) for s, p in rows.items()} == {"train": 100, **SIZES}
    ids = [f"HumanEval/{i}" for i in range(164)]
    assert split_ids(ids) != split_ids(ids, seed=1)  # the seed decides
    assert split_ids(ids[::-1])["test"] == split_ids(ids)["test"][::-1]  # the file's order does not
