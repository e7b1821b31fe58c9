"""Loading configs from YAML and the environment, and turning validation errors into advice.

Environment names are derived from the config classes, never hand-copied: a field
`store.endpoint` of the sampler's config is `RESTEM_SAMPLER__STORE__ENDPOINT`. Values from the
environment are parsed as YAML scalars so that numbers and booleans keep their types.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from shared.errors import StatusError

M = TypeVar("M", bound=BaseModel)


class ConfigError(StatusError, ValueError):
    """A config that cannot be used; the message names each bad field and what to set."""


def describe_validation_error(err: ValidationError, *, source: str) -> str:
    """One line per problem: `field.path: what is wrong (got value)`."""
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required field is missing; set it"
        got = e.get("input")
        shown = (
            "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        )
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_yaml_mapping(text: str, *, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of settings, got {type(data).__name__}")
    return data


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested dict from `PREFIX__A__B=value` variables (keys lower-cased)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    head = prefix + "__"
    for name, raw in environ.items():
        if not name.startswith(head):
            continue
        path = [p.lower() for p in name[len(head) :].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(model: type[M], data: Mapping[str, Any], *, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source=source)) from None


def load_service_config(
    model: type[M], path: Path | None, *, env_prefix: str, environ: Mapping[str, str] | None = None
) -> M:
    """File (optional) overlaid by environment variables, validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing file to --config")
        data = parse_yaml_mapping(path.read_text(), source=str(path))
        source = str(path)
    overrides = env_overrides(env_prefix, environ)
    if overrides:
        source += f" + ${env_prefix}__* environment"
    return validate(model, _merge(data, overrides), source=source)
