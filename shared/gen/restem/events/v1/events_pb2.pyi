from restem.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrepareJob(_message.Message):
    __slots__ = ("run_id", "job_id", "model_source", "model_key")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    model_source: str
    model_key: str
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., model_source: _Optional[str] = ..., model_key: _Optional[str] = ...) -> None: ...

class PrepareDone(_message.Message):
    __slots__ = ("run_id", "job_id", "model_key", "architecture", "num_parameters", "max_position_embeddings", "seconds")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    model_key: str
    architecture: str
    num_parameters: int
    max_position_embeddings: int
    seconds: float
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., model_key: _Optional[str] = ..., architecture: _Optional[str] = ..., num_parameters: _Optional[int] = ..., max_position_embeddings: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class SampleJob(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "shard", "task", "dataset_key", "problem_ids", "policy_key", "params", "output_key", "prompt_format", "first_index")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_KEY_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_IDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_KEY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    shard: int
    task: str
    dataset_key: str
    problem_ids: _containers.RepeatedScalarFieldContainer[str]
    policy_key: str
    params: _common_pb2.SamplingParams
    output_key: str
    prompt_format: _common_pb2.PromptFormat
    first_index: int
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., shard: _Optional[int] = ..., task: _Optional[str] = ..., dataset_key: _Optional[str] = ..., problem_ids: _Optional[_Iterable[str]] = ..., policy_key: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., output_key: _Optional[str] = ..., prompt_format: _Optional[_Union[_common_pb2.PromptFormat, _Mapping]] = ..., first_index: _Optional[int] = ...) -> None: ...

class SampleDone(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "shard", "samples_key", "num_samples", "num_tokens", "seconds")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_KEY_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    shard: int
    samples_key: str
    num_samples: int
    num_tokens: int
    seconds: float
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., shard: _Optional[int] = ..., samples_key: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_tokens: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class VerifyJob(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "shard", "task", "dataset_key", "samples_key", "output_key", "reverification", "reward")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_KEY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    REVERIFICATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    shard: int
    task: str
    dataset_key: str
    samples_key: str
    output_key: str
    reverification: int
    reward: str
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., shard: _Optional[int] = ..., task: _Optional[str] = ..., dataset_key: _Optional[str] = ..., samples_key: _Optional[str] = ..., output_key: _Optional[str] = ..., reverification: _Optional[int] = ..., reward: _Optional[str] = ...) -> None: ...

class VerifyDone(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "shard", "verdicts_key", "num_samples", "num_correct", "seconds", "reverification")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_KEY_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_CORRECT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REVERIFICATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    shard: int
    verdicts_key: str
    num_samples: int
    num_correct: int
    seconds: float
    reverification: int
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., shard: _Optional[int] = ..., verdicts_key: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_correct: _Optional[int] = ..., seconds: _Optional[float] = ..., reverification: _Optional[int] = ...) -> None: ...

class TrainJob(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "base_key", "kept_key", "params", "output_key", "variant", "prompt_format", "validation", "tracking")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    BASE_KEY_FIELD_NUMBER: _ClassVar[int]
    KEPT_KEY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    base_key: str
    kept_key: str
    params: _common_pb2.TrainParams
    output_key: str
    variant: str
    prompt_format: _common_pb2.PromptFormat
    validation: TrainValidation
    tracking: _common_pb2.TrackingSettings
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., base_key: _Optional[str] = ..., kept_key: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.TrainParams, _Mapping]] = ..., output_key: _Optional[str] = ..., variant: _Optional[str] = ..., prompt_format: _Optional[_Union[_common_pb2.PromptFormat, _Mapping]] = ..., validation: _Optional[_Union[TrainValidation, _Mapping]] = ..., tracking: _Optional[_Union[_common_pb2.TrackingSettings, _Mapping]] = ...) -> None: ...

class TrainValidation(_message.Message):
    __slots__ = ("task", "dataset_key", "params", "prompt_format")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_KEY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    task: str
    dataset_key: str
    params: _common_pb2.SamplingParams
    prompt_format: _common_pb2.PromptFormat
    def __init__(self, task: _Optional[str] = ..., dataset_key: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., prompt_format: _Optional[_Union[_common_pb2.PromptFormat, _Mapping]] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "step", "total_steps", "loss")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    step: int
    total_steps: int
    loss: float
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...

class TrainDone(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "checkpoint_key", "steps", "examples", "tokens", "loss_first", "loss_last", "seconds", "variant", "validation_rewards", "best_epoch", "epochs")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIRST_FIELD_NUMBER: _ClassVar[int]
    LOSS_LAST_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_REWARDS_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    checkpoint_key: str
    steps: int
    examples: int
    tokens: int
    loss_first: float
    loss_last: float
    seconds: float
    variant: str
    validation_rewards: _containers.RepeatedScalarFieldContainer[float]
    best_epoch: int
    epochs: int
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., checkpoint_key: _Optional[str] = ..., steps: _Optional[int] = ..., examples: _Optional[int] = ..., tokens: _Optional[int] = ..., loss_first: _Optional[float] = ..., loss_last: _Optional[float] = ..., seconds: _Optional[float] = ..., variant: _Optional[str] = ..., validation_rewards: _Optional[_Iterable[float]] = ..., best_epoch: _Optional[int] = ..., epochs: _Optional[int] = ...) -> None: ...

class EvalJob(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "split", "task", "dataset_key", "checkpoint_key", "params", "output_key", "prompt_format", "sample_params", "variant", "shard", "num_shards", "problem_offset", "problem_count")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    split: str
    task: str
    dataset_key: str
    checkpoint_key: str
    params: _common_pb2.SamplingParams
    output_key: str
    prompt_format: _common_pb2.PromptFormat
    sample_params: _common_pb2.SamplingParams
    variant: str
    shard: int
    num_shards: int
    problem_offset: int
    problem_count: int
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., split: _Optional[str] = ..., task: _Optional[str] = ..., dataset_key: _Optional[str] = ..., checkpoint_key: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., output_key: _Optional[str] = ..., prompt_format: _Optional[_Union[_common_pb2.PromptFormat, _Mapping]] = ..., sample_params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., variant: _Optional[str] = ..., shard: _Optional[int] = ..., num_shards: _Optional[int] = ..., problem_offset: _Optional[int] = ..., problem_count: _Optional[int] = ...) -> None: ...

class EvalDone(_message.Message):
    __slots__ = ("run_id", "job_id", "iteration", "split", "results_key", "num_problems", "num_correct", "pass_at_1", "seconds", "num_tokens", "metrics", "variant", "shard", "num_shards")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_KEY_FIELD_NUMBER: _ClassVar[int]
    NUM_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    NUM_CORRECT_FIELD_NUMBER: _ClassVar[int]
    PASS_AT_1_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    iteration: int
    split: str
    results_key: str
    num_problems: int
    num_correct: int
    pass_at_1: float
    seconds: float
    num_tokens: int
    metrics: _containers.ScalarMap[str, float]
    variant: str
    shard: int
    num_shards: int
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., split: _Optional[str] = ..., results_key: _Optional[str] = ..., num_problems: _Optional[int] = ..., num_correct: _Optional[int] = ..., pass_at_1: _Optional[float] = ..., seconds: _Optional[float] = ..., num_tokens: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., variant: _Optional[str] = ..., shard: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("run_id", "job_id", "job_type", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    job_type: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., job_type: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
