import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_PENDING: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_PREPARING: _ClassVar[Phase]
    PHASE_SAMPLING: _ClassVar[Phase]
    PHASE_VERIFYING: _ClassVar[Phase]
    PHASE_FILTERING: _ClassVar[Phase]
    PHASE_TRAINING: _ClassVar[Phase]
    PHASE_EVALUATING: _ClassVar[Phase]
    PHASE_DONE: _ClassVar[Phase]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_PENDING: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
PHASE_UNSPECIFIED: Phase
PHASE_PREPARING: Phase
PHASE_SAMPLING: Phase
PHASE_VERIFYING: Phase
PHASE_FILTERING: Phase
PHASE_TRAINING: Phase
PHASE_EVALUATING: Phase
PHASE_DONE: Phase

class PhaseProgress(_message.Message):
    __slots__ = ("phase", "done", "total", "unit")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    done: int
    total: int
    unit: str
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ...) -> None: ...

class EvalResult(_message.Message):
    __slots__ = ("split", "num_problems", "num_correct", "pass_at_1", "results_key", "metrics", "shard", "results_keys")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    NUM_CORRECT_FIELD_NUMBER: _ClassVar[int]
    PASS_AT_1_FIELD_NUMBER: _ClassVar[int]
    RESULTS_KEY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    RESULTS_KEYS_FIELD_NUMBER: _ClassVar[int]
    split: str
    num_problems: int
    num_correct: int
    pass_at_1: float
    results_key: str
    metrics: _containers.ScalarMap[str, float]
    shard: int
    results_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, split: _Optional[str] = ..., num_problems: _Optional[int] = ..., num_correct: _Optional[int] = ..., pass_at_1: _Optional[float] = ..., results_key: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., shard: _Optional[int] = ..., results_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainSummary(_message.Message):
    __slots__ = ("steps", "examples", "tokens", "loss_first", "loss_last", "seconds", "skipped", "validation_rewards", "best_epoch", "epochs")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIRST_FIELD_NUMBER: _ClassVar[int]
    LOSS_LAST_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_REWARDS_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    examples: int
    tokens: int
    loss_first: float
    loss_last: float
    seconds: float
    skipped: bool
    validation_rewards: _containers.RepeatedScalarFieldContainer[float]
    best_epoch: int
    epochs: int
    def __init__(self, steps: _Optional[int] = ..., examples: _Optional[int] = ..., tokens: _Optional[int] = ..., loss_first: _Optional[float] = ..., loss_last: _Optional[float] = ..., seconds: _Optional[float] = ..., skipped: _Optional[bool] = ..., validation_rewards: _Optional[_Iterable[float]] = ..., best_epoch: _Optional[int] = ..., epochs: _Optional[int] = ...) -> None: ...

class Iteration(_message.Message):
    __slots__ = ("iteration", "policy_key", "checkpoint_key", "samples", "correct_samples", "train_pass_rate", "problems_solved", "problems_total", "kept", "kept_key", "train", "evals", "tokens_generated", "phase_seconds", "seconds", "shards_total", "shards_sampled", "shards_verified", "started", "sampling_rounds", "eval_shards", "samples_prefix", "verdicts_prefix", "kept_sha256", "checkpoint_sha256", "lineage_key", "sample_rewards", "kept_rewards", "kept_weight")
    class PhaseSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SampleRewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class KeptRewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_SOLVED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    KEPT_KEY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EVALS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    EVAL_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PREFIX_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_PREFIX_FIELD_NUMBER: _ClassVar[int]
    KEPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_REWARDS_FIELD_NUMBER: _ClassVar[int]
    KEPT_REWARDS_FIELD_NUMBER: _ClassVar[int]
    KEPT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    policy_key: str
    checkpoint_key: str
    samples: int
    correct_samples: int
    train_pass_rate: float
    problems_solved: int
    problems_total: int
    kept: int
    kept_key: str
    train: TrainSummary
    evals: _containers.RepeatedCompositeFieldContainer[EvalResult]
    tokens_generated: int
    phase_seconds: _containers.ScalarMap[str, float]
    seconds: float
    shards_total: int
    shards_sampled: _containers.RepeatedScalarFieldContainer[int]
    shards_verified: _containers.RepeatedScalarFieldContainer[int]
    started: _timestamp_pb2.Timestamp
    sampling_rounds: int
    eval_shards: _containers.RepeatedCompositeFieldContainer[EvalResult]
    samples_prefix: str
    verdicts_prefix: str
    kept_sha256: str
    checkpoint_sha256: str
    lineage_key: str
    sample_rewards: _containers.ScalarMap[str, int]
    kept_rewards: _containers.ScalarMap[str, int]
    kept_weight: float
    def __init__(self, iteration: _Optional[int] = ..., policy_key: _Optional[str] = ..., checkpoint_key: _Optional[str] = ..., samples: _Optional[int] = ..., correct_samples: _Optional[int] = ..., train_pass_rate: _Optional[float] = ..., problems_solved: _Optional[int] = ..., problems_total: _Optional[int] = ..., kept: _Optional[int] = ..., kept_key: _Optional[str] = ..., train: _Optional[_Union[TrainSummary, _Mapping]] = ..., evals: _Optional[_Iterable[_Union[EvalResult, _Mapping]]] = ..., tokens_generated: _Optional[int] = ..., phase_seconds: _Optional[_Mapping[str, float]] = ..., seconds: _Optional[float] = ..., shards_total: _Optional[int] = ..., shards_sampled: _Optional[_Iterable[int]] = ..., shards_verified: _Optional[_Iterable[int]] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sampling_rounds: _Optional[int] = ..., eval_shards: _Optional[_Iterable[_Union[EvalResult, _Mapping]]] = ..., samples_prefix: _Optional[str] = ..., verdicts_prefix: _Optional[str] = ..., kept_sha256: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., lineage_key: _Optional[str] = ..., sample_rewards: _Optional[_Mapping[str, int]] = ..., kept_rewards: _Optional[_Mapping[str, int]] = ..., kept_weight: _Optional[float] = ...) -> None: ...

class ReverifiedIteration(_message.Message):
    __slots__ = ("iteration", "verdicts_prefix", "shards_total", "shards_done", "samples", "correct_samples", "flipped_to_correct", "flipped_to_wrong", "kept_sets_differ", "kept", "checkers_before", "checkers_after", "kept_key")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FLIPPED_TO_CORRECT_FIELD_NUMBER: _ClassVar[int]
    FLIPPED_TO_WRONG_FIELD_NUMBER: _ClassVar[int]
    KEPT_SETS_DIFFER_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    CHECKERS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CHECKERS_AFTER_FIELD_NUMBER: _ClassVar[int]
    KEPT_KEY_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    verdicts_prefix: str
    shards_total: int
    shards_done: _containers.RepeatedScalarFieldContainer[int]
    samples: int
    correct_samples: int
    flipped_to_correct: int
    flipped_to_wrong: int
    kept_sets_differ: int
    kept: int
    checkers_before: _containers.RepeatedScalarFieldContainer[str]
    checkers_after: _containers.RepeatedScalarFieldContainer[str]
    kept_key: str
    def __init__(self, iteration: _Optional[int] = ..., verdicts_prefix: _Optional[str] = ..., shards_total: _Optional[int] = ..., shards_done: _Optional[_Iterable[int]] = ..., samples: _Optional[int] = ..., correct_samples: _Optional[int] = ..., flipped_to_correct: _Optional[int] = ..., flipped_to_wrong: _Optional[int] = ..., kept_sets_differ: _Optional[int] = ..., kept: _Optional[int] = ..., checkers_before: _Optional[_Iterable[str]] = ..., checkers_after: _Optional[_Iterable[str]] = ..., kept_key: _Optional[str] = ...) -> None: ...

class Reverification(_message.Message):
    __slots__ = ("number", "iterations", "done", "changes_key", "started", "finished", "summary")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_KEY_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    number: int
    iterations: _containers.RepeatedCompositeFieldContainer[ReverifiedIteration]
    done: bool
    changes_key: str
    started: _timestamp_pb2.Timestamp
    finished: _timestamp_pb2.Timestamp
    summary: str
    def __init__(self, number: _Optional[int] = ..., iterations: _Optional[_Iterable[_Union[ReverifiedIteration, _Mapping]]] = ..., done: _Optional[bool] = ..., changes_key: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "name", "status", "phase", "iteration", "iterations_total", "progress", "iterations", "error", "config_yaml", "base_model_key", "created", "updated", "finished", "best_iteration", "report_key", "task", "phase_started", "model_source", "sft_enabled", "sft", "forked_from", "forked_at", "forked_reverification", "reverifications")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    BEST_ITERATION_FIELD_NUMBER: _ClassVar[int]
    REPORT_KEY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PHASE_STARTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SFT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    SFT_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_FIELD_NUMBER: _ClassVar[int]
    FORKED_AT_FIELD_NUMBER: _ClassVar[int]
    FORKED_REVERIFICATION_FIELD_NUMBER: _ClassVar[int]
    REVERIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    status: RunStatus
    phase: Phase
    iteration: int
    iterations_total: int
    progress: PhaseProgress
    iterations: _containers.RepeatedCompositeFieldContainer[Iteration]
    error: str
    config_yaml: str
    base_model_key: str
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    finished: _timestamp_pb2.Timestamp
    best_iteration: int
    report_key: str
    task: str
    phase_started: _timestamp_pb2.Timestamp
    model_source: str
    sft_enabled: bool
    sft: Iteration
    forked_from: str
    forked_at: int
    forked_reverification: int
    reverifications: _containers.RepeatedCompositeFieldContainer[Reverification]
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., phase: _Optional[_Union[Phase, str]] = ..., iteration: _Optional[int] = ..., iterations_total: _Optional[int] = ..., progress: _Optional[_Union[PhaseProgress, _Mapping]] = ..., iterations: _Optional[_Iterable[_Union[Iteration, _Mapping]]] = ..., error: _Optional[str] = ..., config_yaml: _Optional[str] = ..., base_model_key: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., best_iteration: _Optional[int] = ..., report_key: _Optional[str] = ..., task: _Optional[str] = ..., phase_started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_source: _Optional[str] = ..., sft_enabled: _Optional[bool] = ..., sft: _Optional[_Union[Iteration, _Mapping]] = ..., forked_from: _Optional[str] = ..., forked_at: _Optional[int] = ..., forked_reverification: _Optional[int] = ..., reverifications: _Optional[_Iterable[_Union[Reverification, _Mapping]]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("config_yaml", "from_run", "from_iteration", "from_reverification")
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    FROM_RUN_FIELD_NUMBER: _ClassVar[int]
    FROM_ITERATION_FIELD_NUMBER: _ClassVar[int]
    FROM_REVERIFICATION_FIELD_NUMBER: _ClassVar[int]
    config_yaml: str
    from_run: str
    from_iteration: int
    from_reverification: int
    def __init__(self, config_yaml: _Optional[str] = ..., from_run: _Optional[str] = ..., from_iteration: _Optional[int] = ..., from_reverification: _Optional[int] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run_id", "run")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    run: Run
    def __init__(self, run_id: _Optional[str] = ..., run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report_json", "report_key", "files")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    REPORT_KEY_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    report_key: str
    files: _containers.ScalarMap[str, bytes]
    def __init__(self, report_json: _Optional[str] = ..., report_key: _Optional[str] = ..., files: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FileHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[FileHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class FileHeader(_message.Message):
    __slots__ = ("name", "sha256", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class UploadFileResponse(_message.Message):
    __slots__ = ("uri", "stored")
    URI_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    uri: str
    stored: bool
    def __init__(self, uri: _Optional[str] = ..., stored: _Optional[bool] = ...) -> None: ...

class StatFileRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class StatFileResponse(_message.Message):
    __slots__ = ("exists", "uri")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    uri: str
    def __init__(self, exists: _Optional[bool] = ..., uri: _Optional[str] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("run_id", "iteration", "check")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    check: bool
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ..., check: _Optional[bool] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("lineage_json", "mismatches", "artifacts_checked")
    LINEAGE_JSON_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    lineage_json: str
    mismatches: _containers.RepeatedScalarFieldContainer[str]
    artifacts_checked: int
    def __init__(self, lineage_json: _Optional[str] = ..., mismatches: _Optional[_Iterable[str]] = ..., artifacts_checked: _Optional[int] = ...) -> None: ...

class ReverifyRunRequest(_message.Message):
    __slots__ = ("run_id", "iteration")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ...) -> None: ...

class ReverifyRunResponse(_message.Message):
    __slots__ = ("run", "number")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    run: Run
    number: int
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., number: _Optional[int] = ...) -> None: ...

class RecoverRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecoverRunsResponse(_message.Message):
    __slots__ = ("recovered", "present")
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    recovered: _containers.RepeatedCompositeFieldContainer[Run]
    present: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recovered: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., present: _Optional[_Iterable[str]] = ...) -> None: ...
