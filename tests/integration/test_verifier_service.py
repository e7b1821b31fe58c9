"""The verifier service with its sandbox pools: the Verify RPC over real gRPC, and verify jobs over a
real nats-server and store, for code (APPS stdin / call-based, HumanEval), MATH and numeric tasks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from restem.events.v1 import events_pb2 as ev
from restem.verifier.v1 import verifier_pb2 as pb
from restem.verifier.v1 import verifier_pb2_grpc as pb_grpc

from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings, VerifierConfig
from services.verifier.events import VerifyHandler
from services.verifier.grpc_api import VerifierApi
from services.verifier.math_checks import MATH_CHECKER_VERSION
from shared.bus import EventBus, PermanentError
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, load_problems, loads_jsonl
from shared.worker import WorkerState

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
APPS = {p["id"]: p for p in load_problems(DATA / "apps-tiny-train.jsonl", "apps")}
HE0 = load_problems("builtin:humaneval", "humaneval")[0]


def _item(task: str, reference: object, completion: str) -> pb.VerifyItem:
    return pb.VerifyItem(task=task, reference_json=json.dumps(reference), completion=completion)


@pytest.fixture(scope="module")
def checkers() -> object:
    c = Checkers(SandboxSettings(workers=2, math_workers=1))
    yield c
    c.close()


@pytest.fixture
async def verifier(tmp_path: Path, checkers: Checkers) -> AsyncIterator[pb_grpc.VerifierServiceStub]:
    port_file = tmp_path / "port"
    cfg = VerifierConfig(grpc=GrpcConfig(port_file=port_file, grace_s=0), max_items_per_request=50)
    binding = ServiceBinding(
        pb_grpc.add_VerifierServiceServicer_to_server,
        VerifierApi(cfg, WorkerState("verifier", device="cpu"), checkers),
        "restem.verifier.v1.VerifierService",
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve([binding], cfg.grpc, healthy=checkers.healthy, stop=stop))
    while not port_file.exists():
        await asyncio.sleep(0.02)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
        yield pb_grpc.VerifierServiceStub(channel)
    stop.set()
    await server


async def test_one_request_scores_every_task_in_order(verifier: pb_grpc.VerifierServiceStub) -> None:
    items = [
        _item(
            "apps",
            APPS["sum-two"]["answer"],
            "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        ),
        _item("apps", APPS["sum-two"]["answer"], "```python\nprint(int(input().split()[0]) * 2)\n```"),
        _item(
            "apps", APPS["add-fn"]["answer"], "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
        ),
        _item("arithmetic", "55", "The answer is 55."),
        _item("apps", APPS["is-even"]["answer"], "```python\ndef is_even(n):\n    return n % 2\n```"),
        _item("humaneval", HE0["answer"], f"```python\n{HE0['question']}{HE0['solution']}```"),
        _item("humaneval", HE0["answer"], HE0["solution"]),  # a raw continuation of the prompt
        _item(
            "humaneval",
            HE0["answer"],
            "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```",
        ),
        _item("math", "\\frac{1}{2}", "so $\\boxed{\\dfrac{2}{4}}$"),
        _item("math", "\\frac{1}{2}", "so $\\boxed{0.333}$"),
    ]
    resp = await verifier.Verify(pb.VerifyRequest(items=items), timeout=120)
    got = [(v.correct, v.rule) for v in resp.verdicts]
    assert got[0] == (True, "all-tests-passed") and got[2] == (True, "all-tests-passed")
    assert got[1] == (False, "test-0-token-mismatch-integer") and resp.verdicts[1].extracted == "wrong_answer"
    assert got[3] == (True, "answer-is")
    assert got[4] == (False, "test-0-value-mismatch")
    assert got[5] == got[6] == (True, "all-tests-passed")
    assert got[7] == (False, "test-0-assertion-failed")
    assert got[8] == (True, "math-verify") and got[9][0] is False
    assert [v.checker_version for v in resp.verdicts][:4] == ["code-1", "code-1", "code-1", "numeric-1"]
    assert resp.verdicts[8].checker_version == MATH_CHECKER_VERSION


async def test_model_mistakes_are_failing_verdicts_not_errors(verifier: pb_grpc.VerifierServiceStub) -> None:
    ref = APPS["double"]["answer"]
    items = [
        _item("apps", ref, ""),
        _item("apps", ref, "I cannot write code."),
        _item("apps", ref, "```python\nwhile True: pass\n```"),
    ]
    resp = await verifier.Verify(pb.VerifyRequest(items=items), timeout=120)
    assert [(v.correct, v.rule) for v in resp.verdicts][:2] == [
        (False, "invalid-argument"),
        (False, "test-0-exit-1-SyntaxError"),
    ]
    assert resp.verdicts[0].detail == "code is empty"
    huge = await verifier.Verify(pb.VerifyRequest(items=[_item("apps", ref, "x = 1\n" * 60_000)]), timeout=60)
    assert (huge.verdicts[0].rule, huge.verdicts[0].detail) == (
        "invalid-argument",
        "code is over 262144 bytes",
    )
    assert (resp.verdicts[2].extracted, resp.verdicts[2].rule) == ("time_limit", "test-0-wall-time-limit")


@pytest.mark.parametrize(
    ("item", "words"),
    [
        (_item("apps", {"question": "no tests"}, "x"), "unknown code task shape"),
        (_item("apps", {"kind": "stdin", "tests": []}, "print(1)"), "has no tests"),
        (_item("apps", "42", "print(42)"), "must be the problem object"),
        (
            _item(
                "humaneval", {"prompt": "def f(:\n", "test": "def check(c): pass", "entry_point": "f"}, "x"
            ),
            "does not compile",
        ),
        (_item("chess", "e4", "e5"), "'chess' has no checker"),
        (pb.VerifyItem(task="apps", reference_json="{not json", completion="x"), "not valid JSON"),
    ],
)
async def test_unusable_requests_are_invalid_argument(
    verifier: pb_grpc.VerifierServiceStub, item: pb.VerifyItem, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await verifier.Verify(pb.VerifyRequest(items=[item]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
    again = await verifier.Verify(
        pb.VerifyRequest(items=[_item("arithmetic", "2", "The answer is 2.")]), timeout=60
    )
    assert again.verdicts[0].correct  # the service is still serving


async def test_verify_job_writes_verdicts_once(nats_config, tmp_path: Path, checkers: Checkers) -> None:
    bus = await EventBus.connect(nats_config, name="test-verifier")
    await bus.ensure_topology()
    store = LocalStore(tmp_path / "store")
    problems = {pid: APPS[pid] for pid in ("sum-two", "add-fn")}
    store.put_bytes("d/train.jsonl", dumps_jsonl(list(problems.values())))
    samples = [
        {
            "sample_id": "s0",
            "problem_id": "sum-two",
            "completion": "```python\nprint(sum(map(int, input().split())))\n```",
        },
        {
            "sample_id": "s1",
            "problem_id": "add-fn",
            "completion": "```python\ndef add(a, b):\n    return a - b\n```",
        },
    ]
    store.put_bytes("r/samples.jsonl", dumps_jsonl(samples))
    handler = VerifyHandler(bus, store, checkers)
    job = ev.VerifyJob(run_id="run-v", job_id="run-v.verify.1.0", iteration=1, shard=0, task="apps",
                       dataset_key="d/train.jsonl", samples_key="r/samples.jsonl", output_key="r/verdicts.jsonl")  # fmt: skip
    await handler(job)
    first = store.get_bytes("r/verdicts.jsonl")
    rows = loads_jsonl(first)
    assert [(r["sample_id"], r["correct"], r["rule"]) for r in rows] == [
        ("s0", True, "all-tests-passed"),
        ("s1", False, "test-0-value-mismatch"),
    ]
    assert rows[1]["detail"] == "got -1" and rows[0]["checker_version"] == "code-1"
    await handler(job)  # a redelivery changes nothing
    assert store.get_bytes("r/verdicts.jsonl") == first
    broken = {"sum-two": {**APPS["sum-two"], "answer": {"id": "sum-two", "kind": "stdin", "tests": []}}}
    store.put_bytes("d/broken.jsonl", dumps_jsonl(list(broken.values())))
    store.put_bytes("r/samples-1.jsonl", dumps_jsonl(samples[:1]))
    bad = ev.VerifyJob(run_id="run-v", job_id="run-v.verify.1.1", iteration=1, shard=1, task="apps",
                       dataset_key="d/broken.jsonl", samples_key="r/samples-1.jsonl", output_key="r/v2.jsonl")  # fmt: skip
    with pytest.raises(PermanentError, match="has no tests"):
        await handler(bad)
    assert not store.exists("r/v2.jsonl")
    await bus.close()


def test_calibrated_limits_are_written_into_the_dataset(tmp_path: Path, checkers: Checkers) -> None:
    from services.verifier.calibrate import main

    rows = [json.loads(line) for line in (DATA / "apps-tiny-train.jsonl").read_text().splitlines()[:3]]
    rows[1]["solutions"] = json.dumps(["print(0)\n"])  # a reference that fails its own tests
    rows.append({"id": "slow", "question": "q", "input_output": {"inputs": ["\n"], "outputs": ["done\n"]},
                 "solutions": ["import time\ntime.sleep(0.6)\nprint('done')\n"]})  # fmt: skip
    src, dest = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert (
        main(["--task", "apps", "--floor", "1", "--factor", "3", "--workers", "2", str(src), str(dest)]) == 0
    )
    out = {p["id"]: p for p in load_problems(dest, "apps")}
    assert out["sum-two"]["answer"]["time_limit_s"] == 1.0  # fast: the floor
    assert "time_limit_s" not in out["double"]["answer"]  # its reference fails: the limit is kept
    assert 1.8 <= out["slow"]["answer"]["time_limit_s"] <= 6.0  # 3 x ~0.6 s
    assert out["sum-two"]["question"] == rows[0]["question"]  # the rest of each line is unchanged
    assert main(["--task", "apps", str(tmp_path / "missing.jsonl"), str(dest)]) == 2
