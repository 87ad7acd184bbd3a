"""Config validation: the JSON schema for config.yaml and frozen dataclasses for each stage."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from latentfss.errors import InputError

T = TypeVar("T")


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing or malformed file is an InputError naming it."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InputError(f"{path}: not valid YAML{line}") from None


def _fill_defaults(instance: dict, schema: dict) -> None:
    """Insert each missing property's schema default, recursing into nested objects."""
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def _scalar(text: str, kind: str | None) -> Any:
    """`text` as the schema's scalar type `kind` when it reads as one, else `text` itself."""
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), text)
    for convert in {"integer": (int,), "number": (int, float)}.get(kind, ()):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _typed(value: Any, schema: dict) -> Any:
    """`value` with every string where the schema wants a number or a boolean converted:
    Snakemake's `--config 'train={iterations: 5}'` parses nested values as strings."""
    if isinstance(value, str):
        return _scalar(value, schema.get("type"))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_typed(item, schema["items"]) for item in value]
    if isinstance(value, dict):
        properties, others = schema.get("properties", {}), schema.get("additionalProperties")
        rest = others if isinstance(others, dict) else {}  # e.g. each row of `runs`
        return {key: _typed(v, properties.get(key, rest)) for key, v in value.items()}
    return value


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        known = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key '{where}{unknown[0]}' (known here: {known})"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type":
        return f"{key}: {error.instance!r} is not of type {error.validator_value}"
    return f"{key}: {error.message}"


def validate(config: dict, schema_path: str | Path, source: str = "config") -> dict:
    """Check `config` against the JSON schema and fill in its defaults, in place; a string
    where the schema wants a number or a boolean is converted first (`--config` gives strings).

    Raises InputError with one line naming the offending key, e.g.
    "config: unknown key 'dataset.nme' (known here: name, root, train_list)".
    """
    schema = read_yaml(schema_path)
    if not isinstance(config, dict):
        raise InputError(f"{source}: expected a mapping of sections, got {type(config).__name__}")
    config.update(_typed(config, schema))
    _fill_defaults(config, schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        raise InputError(f"{source}: {_describe(jsonschema.exceptions.best_match(errors))}")
    return config


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_params(cls: type[T], params: dict | str | None, section: str) -> T:
    """Build a stage's frozen dataclass from its config section (a dict or a JSON string).

    Unknown keys, wrongly typed values and values the dataclass rejects (ValueError in its
    __post_init__) are InputErrors naming the section; keys left out keep their default.
    """
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except json.JSONDecodeError as e:
            raise InputError(f"--params for '{section}' is not valid JSON ({e.msg})") from None
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise InputError(f"unknown key '{section}.{key}' (known here: {known})")
        if not _matches(value, hints[key]):
            expected = getattr(hints[key], "__name__", hints[key])
            raise InputError(f"{section}.{key}: {value!r} is not of type {expected}")
        if isinstance(value, list):
            params[key] = tuple(value)
    missing = [n for n, f in fields.items() if n not in params and _no_default(f)]
    if missing:
        raise InputError(f"{section}: missing key(s) {', '.join(missing)}")
    try:
        return cls(**params)
    except ValueError as e:  # the dataclass's own checks of values and their combinations
        raise InputError(f"{section}: {e}") from None


def _no_default(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
