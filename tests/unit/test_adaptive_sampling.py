"""Adaptive sampling: the round plan (pure) and the coordinator's rounds of shards."""

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import adaptive, core
from shared.configio import ConfigError
from shared.runconfig import parse_run_config
from shared.seeds import derive_seed, sample_seeds

IDS = [f"p{i}" for i in range(6)]


def _cfg(adaptive_yaml: str = "{enabled: true}", n: int = 8, cutoff: int = 2, shard_size: int = 4):
    return parse_run_config(
        "task: {arithmetic: {train: 6, validation: 2, test: 2}}\n"
        f"em: {{iterations: 1, cutoff: {cutoff}, shard_size: {shard_size}}}\n"
        f"sampling: {{n: {n}, adaptive: {adaptive_yaml}}}\n"
    )


def _rows(pid: str, start: int, texts: list[str | None]):
    """Samples of one problem from index `start`; a None text is an incorrect sample."""
    samples, verdicts = [], []
    for i, text in enumerate(texts, start=start):
        sid = f"i1/{pid}/{i}"
        samples.append({"sample_id": sid, "problem_id": pid, "completion": text or "wrong"})
        verdicts.append({"sample_id": sid, "correct": text is not None})
    return samples, verdicts


def test_fixed_k_is_the_default_and_has_a_single_round():
    cfg = parse_run_config("sampling: {n: 8}")
    assert not cfg.sampling.adaptive.enabled
    assert adaptive.first_round_n(cfg.sampling) == 8
    assert adaptive.plan_next_round(cfg, IDS, {}, 1) is None


def test_tally_counts_distinct_correct_completions_like_the_filter():
    s1, v1 = _rows("a", 0, ["x = 5", "x  =  5", None, "5"])
    t = adaptive.tally(s1, v1)["a"]
    assert (t.samples, t.correct, t.distinct_correct) == (4, 3, 2)


def test_solved_problems_stop_and_the_rest_continue_numbering_after_round_one():
    cfg = _cfg()
    assert adaptive.first_round_n(cfg.sampling) == 4  # ceil(8 / 2 rounds)
    samples, verdicts = [], []
    for pid in IDS:
        texts = ["a", "b", None, None] if pid in ("p0", "p3") else [None, "a", "a", None]
        s, v = _rows(pid, 0, texts)
        samples += s
        verdicts += v
    plan = adaptive.plan_next_round(cfg, IDS, adaptive.tally(samples, verdicts), 1)
    # p0 and p3 have 2 distinct correct (= cutoff); the others 2 correct but 1 distinct
    assert plan == adaptive.RoundPlan(n=4, first_index=4, problem_ids=["p1", "p2", "p4", "p5"])
    counting_all = _cfg("{enabled: true, count: correct}")
    assert adaptive.plan_next_round(counting_all, IDS, adaptive.tally(samples, verdicts), 1) is None


def test_the_last_round_and_an_all_solved_round_end_the_e_step():
    cfg = _cfg("{enabled: true, rounds: 3, first_round_n: 2}")
    s, v = _rows("p0", 0, [None, None])
    assert adaptive.plan_next_round(cfg, ["p0"], adaptive.tally(s, v), 3) is None
    plan = adaptive.plan_next_round(cfg, ["p0"], adaptive.tally(s, v), 1)
    assert plan == adaptive.RoundPlan(n=3, first_index=2, problem_ids=["p0"])  # ceil(6 left / 2 rounds)
    s, v = _rows("p0", 0, ["a", "b"])
    assert adaptive.plan_next_round(cfg, ["p0"], adaptive.tally(s, v), 1) is None


def test_unused_budget_goes_to_unsolved_problems_up_to_the_maximum():
    cfg = _cfg("{enabled: true, first_round_n: 4, max_per_problem: 32}", n=8)
    samples, verdicts = [], []
    for pid in IDS:  # five of six solved in round 1: 24 samples spent of 48
        s, v = _rows(pid, 0, [None] * 4 if pid == "p5" else ["a", "b", "c", "d"])
        samples += s
        verdicts += v
    plan = adaptive.plan_next_round(cfg, IDS, adaptive.tally(samples, verdicts), 1)
    assert plan == adaptive.RoundPlan(n=24, first_index=4, problem_ids=["p5"])  # the whole remaining budget
    capped = _cfg("{enabled: true, first_round_n: 4, max_per_problem: 10}", n=8)
    plan = adaptive.plan_next_round(capped, IDS, adaptive.tally(samples, verdicts), 1)
    assert plan is not None and plan.n == 6  # up to 10 per problem
    fixed_cap = _cfg("{enabled: true, first_round_n: 4}", n=8)
    plan = adaptive.plan_next_round(fixed_cap, IDS, adaptive.tally(samples, verdicts), 1)
    assert plan is not None and plan.n == 4  # the default maximum is K


def test_a_first_round_above_the_maximum_is_a_config_error():
    with pytest.raises(ConfigError, match=r"first_round_n \(9\) exceeds.*max_per_problem"):
        _cfg("{enabled: true, first_round_n: 9}", n=8)


def _run_to_filtering(cfg):
    run, _ = core.new_run("demo-abc123", cfg, "", base_model_key="models/base")
    core.on_prepare_done(run, cfg, ev.PrepareDone(), {"test": 64})
    d = core.on_eval_done(run, cfg, ev.EvalDone(iteration=0, split="test"), {"test": 64}, IDS)
    for job in d.jobs:
        core.on_sample_done(run, cfg, ev.SampleDone(iteration=1, shard=job.message.shard, num_samples=4))
    for job in d.jobs:
        d2 = core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=job.message.shard))
    assert d2.needs_filter and run.phase == pb.PHASE_FILTERING
    return run, d.jobs


def test_rounds_run_as_more_shards_with_fresh_ids_and_sample_numbers():
    cfg = _cfg()
    run, first = _run_to_filtering(cfg)
    assert [j.message.params.n for j in first] == [4, 4] and run.iterations[-1].sampling_rounds == 1
    plan = adaptive.RoundPlan(n=4, first_index=4, problem_ids=["p1", "p2", "p4", "p5", "p0"])
    d = core.on_round_planned(run, cfg, 1, plan)
    it = run.iterations[-1]
    assert run.phase == pb.PHASE_SAMPLING and it.shards_total == 4 and it.sampling_rounds == 2
    assert [j.message.shard for j in d.jobs] == [2, 3]
    assert [list(j.message.problem_ids) for j in d.jobs] == [["p1", "p2", "p4", "p5"], ["p0"]]
    assert {j.message.first_index for j in d.jobs} == {4} and {j.message.params.n for j in d.jobs} == {4}
    every = [*first, *d.jobs]
    assert len({j.job_id for j in every}) == 4
    assert {j.message.params.seed for j in every} == {derive_seed(cfg.sampling.seed, 1)}  # the iteration's
    # the same plan again (a redelivered event) gives the same jobs; applied twice it is ignored
    run2, _ = _run_to_filtering(cfg)
    again = core.on_round_planned(run2, cfg, 1, plan)
    assert [j.message for j in again.jobs] == [j.message for j in d.jobs]
    assert core.on_round_planned(run, cfg, 1, plan).jobs == []
    for job in d.jobs:
        core.on_sample_done(run, cfg, ev.SampleDone(iteration=1, shard=job.message.shard))
    for job in d.jobs:
        last = core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=job.message.shard))
    assert last.needs_filter and len(it.shards_verified) == 4


def test_fixed_k_jobs_are_unchanged_by_the_adaptive_code():
    cfg = _cfg("{enabled: false}")
    run, first = _run_to_filtering(cfg)
    assert [j.message.params.n for j in first] == [8, 8]
    assert {j.message.first_index for j in first} == {0} and run.iterations[-1].sampling_rounds == 0


def _sample_seeds_of(jobs):
    """(problem, index) -> the seed the sampler draws that sample with."""
    out = {}
    for job in jobs:
        m = job.message
        per_problem = sample_seeds(m.params.seed, m.problem_ids, m.params.n, m.first_index)
        for pid, seeds in zip(m.problem_ids, per_problem, strict=True):
            for index, seed in enumerate(seeds, start=m.first_index):
                assert (pid, index) not in out  # no sample is drawn twice
                out[pid, index] = seed
    return out


def test_adaptive_rounds_draw_the_samples_fixed_k_would_draw():
    """Same problem and index -> same seed, whatever the shard, round or shard size (issue 5)."""
    _, fixed = _run_to_filtering(_cfg("{enabled: false}"))
    cfg = _cfg(shard_size=3)  # other shards too
    run, first = _run_to_filtering(cfg)
    plan = adaptive.RoundPlan(n=4, first_index=4, problem_ids=["p5", "p1", "p2"])
    rounds = _sample_seeds_of([*first, *core.on_round_planned(run, cfg, 1, plan).jobs])
    fixed_seeds = _sample_seeds_of(fixed)
    assert len(fixed_seeds) == 6 * 8 and len(rounds) == 6 * 4 + 3 * 4
    assert rounds == {key: fixed_seeds[key] for key in rounds}
    assert len(set(fixed_seeds.values())) == len(fixed_seeds)  # yet every sample has its own
    # the next iteration draws afresh
    later = core.sample_job(run, cfg, run.iterations.add(iteration=2), 0, ["p0"]).message
    assert sample_seeds(later.params.seed, ["p0"], 1) != [[fixed_seeds["p0", 0]]]
