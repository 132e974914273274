"""Loads the built-in plugins' JSON data files: the packaged default, or a file named by a plugin setting."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

from core import plugin_settings_prefix

DATA_DIR = Path(__file__).resolve().parent / "data"

Schema = TypeVar("Schema", bound=BaseModel)


class DataFileError(ValueError):
    """A plugin data file is missing, is not JSON, or does not match its schema."""


def data_file_path(plugin: str, setting: str, default_name: str) -> Path:
    """The file in the plugin's `setting` (OMS_PLUGIN_<PLUGIN>_<SETTING>), else the packaged one:
    a deployment points at its own table without rebuilding the package."""
    # One variable looked up by its name, not plugin_settings' walk of the whole environment:
    # the tax table asks on every line it taxes, and os.environ decodes each name it yields.
    return _path(os.environ.get(_variable(plugin, setting), ""), default_name)


@lru_cache(maxsize=64)
def _variable(plugin: str, setting: str) -> str:
    return f"{plugin_settings_prefix(plugin)}{setting.upper()}"


@lru_cache(maxsize=64)
def _path(override: str, default_name: str) -> Path:
    """One Path per setting's value: load_data_file's cache hashes it (a Path hashes its string once)."""
    return Path(override.strip()) if override.strip() else DATA_DIR / default_name


@lru_cache(maxsize=16)
def load_data_file(path: Path, schema: type[Schema]) -> Schema:
    """Read and validate `path` once per process: warm Lambda containers reuse the result."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"cannot read plugin data file {path}: {exc.strerror or exc}") from exc
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}" for error in exc.errors()
        )
        raise DataFileError(f"plugin data file {path} is not a valid {schema.__name__}: {problems}") from exc


def _exact_decimal(value: Any) -> Decimal:
    # JSON numbers with a fraction arrive as binary floats; rates and percentages must not.
    if isinstance(value, bool | float):
        raise ValueError('write the number as a string, such as "0.0725"')
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
        if not parsed.is_finite():
            raise ValueError("must be a finite number")
        return parsed
    raise ValueError('expected a decimal string such as "0.0725"')


DecimalText = Annotated[Decimal, BeforeValidator(_exact_decimal)]
