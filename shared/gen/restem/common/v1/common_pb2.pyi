from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParams(_message.Message):
    __slots__ = ("n", "temperature", "top_k", "top_p", "max_new_tokens", "stop", "stop_regex", "seed", "greedy")
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_REGEX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    n: int
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_regex: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    greedy: bool
    def __init__(self, n: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_regex: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., greedy: _Optional[bool] = ...) -> None: ...

class TrainParams(_message.Message):
    __slots__ = ("learning_rate", "epochs", "batch_size", "weight_decay", "warmup_ratio", "max_seq_len", "max_grad_norm", "seed", "loss_normalisation", "method", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lr_schedule", "min_lr_ratio", "max_steps", "micro_batch_size", "packing", "length_bucketing", "gradient_checkpointing", "checkpoint_every_steps", "patience", "save_dtype")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOSS_NORMALISATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LORA_R_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    LORA_TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MIN_LR_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    LENGTH_BUCKETING_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    SAVE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    epochs: int
    batch_size: int
    weight_decay: float
    warmup_ratio: float
    max_seq_len: int
    max_grad_norm: float
    seed: int
    loss_normalisation: str
    method: str
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: _containers.RepeatedScalarFieldContainer[str]
    lr_schedule: str
    min_lr_ratio: float
    max_steps: int
    micro_batch_size: int
    packing: bool
    length_bucketing: bool
    gradient_checkpointing: bool
    checkpoint_every_steps: int
    patience: int
    save_dtype: str
    def __init__(self, learning_rate: _Optional[float] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., weight_decay: _Optional[float] = ..., warmup_ratio: _Optional[float] = ..., max_seq_len: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., seed: _Optional[int] = ..., loss_normalisation: _Optional[str] = ..., method: _Optional[str] = ..., lora_r: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., lora_dropout: _Optional[float] = ..., lora_target_modules: _Optional[_Iterable[str]] = ..., lr_schedule: _Optional[str] = ..., min_lr_ratio: _Optional[float] = ..., max_steps: _Optional[int] = ..., micro_batch_size: _Optional[int] = ..., packing: _Optional[bool] = ..., length_bucketing: _Optional[bool] = ..., gradient_checkpointing: _Optional[bool] = ..., checkpoint_every_steps: _Optional[int] = ..., patience: _Optional[int] = ..., save_dtype: _Optional[str] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("service", "version", "active_jobs", "jobs_done", "jobs_failed", "loaded_checkpoints", "device", "backend", "cache_hits", "cache_misses", "checks_run")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_JOBS_FIELD_NUMBER: _ClassVar[int]
    JOBS_DONE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FAILED_FIELD_NUMBER: _ClassVar[int]
    LOADED_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    CHECKS_RUN_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    active_jobs: _containers.RepeatedScalarFieldContainer[str]
    jobs_done: int
    jobs_failed: int
    loaded_checkpoints: _containers.RepeatedScalarFieldContainer[str]
    device: str
    backend: str
    cache_hits: int
    cache_misses: int
    checks_run: int
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., active_jobs: _Optional[_Iterable[str]] = ..., jobs_done: _Optional[int] = ..., jobs_failed: _Optional[int] = ..., loaded_checkpoints: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., backend: _Optional[str] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., checks_run: _Optional[int] = ...) -> None: ...

class PromptFormat(_message.Message):
    __slots__ = ("chat_template", "system_prompt")
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    chat_template: bool
    system_prompt: str
    def __init__(self, chat_template: _Optional[bool] = ..., system_prompt: _Optional[str] = ...) -> None: ...

class TrackingSettings(_message.Message):
    __slots__ = ("mlflow", "wandb")
    MLFLOW_FIELD_NUMBER: _ClassVar[int]
    WANDB_FIELD_NUMBER: _ClassVar[int]
    mlflow: MlflowSettings
    wandb: WandbSettings
    def __init__(self, mlflow: _Optional[_Union[MlflowSettings, _Mapping]] = ..., wandb: _Optional[_Union[WandbSettings, _Mapping]] = ...) -> None: ...

class MlflowSettings(_message.Message):
    __slots__ = ("tracking_uri", "experiment")
    TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    tracking_uri: str
    experiment: str
    def __init__(self, tracking_uri: _Optional[str] = ..., experiment: _Optional[str] = ...) -> None: ...

class WandbSettings(_message.Message):
    __slots__ = ("project", "entity", "mode", "dir")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DIR_FIELD_NUMBER: _ClassVar[int]
    project: str
    entity: str
    mode: str
    dir: str
    def __init__(self, project: _Optional[str] = ..., entity: _Optional[str] = ..., mode: _Optional[str] = ..., dir: _Optional[str] = ...) -> None: ...
