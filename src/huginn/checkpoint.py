"""Reading and loading checkpoint folders, with one-line errors that name the file and the fix.

Every command that reads a checkpoint goes through here (`huginn info`, `generate`, `chat`,
`retrofit` for its base, training's `model.init_from`, and `RavenForCausalLM.from_pretrained` for
local folders), so a broken folder fails the same way everywhere, before transformers sees it:
- config.json: missing, not JSON, no or another `model_type`, a missing shape field (n_embd, ...),
  a field of the wrong type (`"n_embd": "64"`) or out of range (`mean_recurrence: -3`);
- weights: no weight file, or a safetensors file that is empty, truncated or not safetensors at
  all (only the headers are read, so this is cheap for any size);
- weights that do not fit the config: transformers' load report is silenced and one line names the
  missing, unexpected or mis-shaped weights.
Not here: the published format itself (`huginn.hf.configuration`), output folders (`huginn.outdir`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huginn.config import SHAPES, ModelConfig, named_shape
from huginn.errors import HuginnError

if TYPE_CHECKING:
    import torch

    from huginn.hf.configuration import RavenConfig
    from huginn.hf.modeling import RavenForCausalLM

HUGINN_MODEL_TYPE = "huginn_raven"
# the fields that decide the weights' shapes: never filled in from the 3.5B defaults
REQUIRED_FIELDS = (
    "n_embd",
    "n_heads",
    "intermediate_size",
    "vocab_size",
    "padding_multiple",
    "block_size",
    "n_layers_in_prelude",
    "n_layers_in_recurrent_block",
    "n_layers_in_coda",
)
INT_FIELDS = (
    *REQUIRED_FIELDS,
    "n_layers",
    "mean_recurrence",
    "mean_backprop_depth",
    "num_key_value_heads",
    "head_dim",
    "padded_vocab_size",
)
NUMBER_FIELDS = ("norm_eps", "rope_base", "embed_scale", "init_std")
BOOL_FIELDS = ("tie_embeddings", "qk_bias", "qk_norm", "coda_input_norm")
STR_FIELDS = ("block_class_name", "injection_type")
NULLABLE_FIELDS = {"num_key_value_heads", "head_dim", "padded_vocab_size", "embed_scale", "init_std"}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --- config.json ---------------------------------------------------------------------------------
def read_config_json(cfg_file: Path) -> dict[str, Any]:
    """The JSON object in `cfg_file`; missing, unreadable or non-object files are one-line errors."""
    if not cfg_file.is_file():
        raise HuginnError(f"{cfg_file} does not exist; pass a checkpoint folder written by save_pretrained")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HuginnError(f"{cfg_file} is not valid JSON ({err}); fix the file or re-export the checkpoint") from None
    if not isinstance(raw, dict):
        raise HuginnError(f"{cfg_file} must hold a JSON object, got {type(raw).__name__}; re-export the checkpoint")
    return raw


def _kind_error(cfg_file: Path, name: str, value: object, kind: str) -> HuginnError:
    return HuginnError(f"{cfg_file}: {name} must be {kind}, got {value!r}; fix the value in config.json")


def check_huginn_fields(raw: dict[str, Any], cfg_file: Path) -> None:
    """model_type, the required shape fields and the types of the fields huginn reads."""
    model_type = raw.get("model_type")
    if model_type is None:
        raise HuginnError(
            f"{cfg_file} has no model_type; a huginn checkpoint's config.json says "
            f'"model_type": "{HUGINN_MODEL_TYPE}" (add it, or pass a huginn checkpoint)'
        )
    if model_type != HUGINN_MODEL_TYPE:
        raise HuginnError(
            f"unknown model_type {model_type!r} in {cfg_file}; huginn reads {HUGINN_MODEL_TYPE!r} checkpoints "
            "(convert a Llama-family or OLMo-2 model with `huginn retrofit`)"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise HuginnError(
            f"{cfg_file} lacks the shape field(s) {', '.join(missing)}; add them (a huginn config.json "
            "lists every shape field) or re-export the checkpoint"
        )
    for name in INT_FIELDS:
        value = raw.get(name)
        if value is None and (name in NULLABLE_FIELDS or name not in raw):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _kind_error(cfg_file, name, value, "an integer")
    for name in NUMBER_FIELDS:
        value = raw.get(name)
        if value is None and (name in NULLABLE_FIELDS or name not in raw):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _kind_error(cfg_file, name, value, "a number")
    for name in BOOL_FIELDS:
        if name in raw and not isinstance(raw[name], bool):
            raise _kind_error(cfg_file, name, raw[name], "true or false")
    for name in STR_FIELDS:
        if name in raw and not isinstance(raw[name], str):
            raise _kind_error(cfg_file, name, raw[name], "a string")


def huginn_config(raw: dict[str, Any], cfg_file: Path) -> RavenConfig:
    """The RavenConfig of a checkpoint's config.json contents, validated (its ModelConfig builds)."""
    from huginn.hf.configuration import RavenConfig

    check_huginn_fields(raw, cfg_file)
    try:
        config = RavenConfig(**{k: v for k, v in raw.items() if k != "model_type"})
        config.to_model_config()
    except HuginnError as err:
        raise HuginnError(f"{cfg_file}: {err}; fix the value in config.json") from None
    except (TypeError, ValueError, ArithmeticError) as err:
        raise HuginnError(
            f"{cfg_file} is not a valid huginn config ({err}); fix it or re-export the checkpoint"
        ) from None
    return config


def read_checkpoint_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of a published-format checkpoint directory (its config.json, or that file)."""
    path = Path(path)
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.exists():
        raise HuginnError(
            f"{path} is not a checkpoint directory (no config.json) nor a named shape ({', '.join(SHAPES)})"
        )
    return huginn_config(read_config_json(cfg_file), cfg_file).to_model_config()


def resolve_model_config(checkpoint_or_shape: str) -> tuple[ModelConfig, str]:
    """(config, description) for a named shape or a checkpoint directory."""
    if checkpoint_or_shape in SHAPES:
        return named_shape(checkpoint_or_shape), f"named shape {checkpoint_or_shape}"
    return read_checkpoint_config(checkpoint_or_shape), f"checkpoint {checkpoint_or_shape}"


# --- weights -------------------------------------------------------------------------------------
def check_safetensors(file: Path) -> None:
    """Read the header of a safetensors file: empty, truncated and foreign files fail here, cheaply."""
    from safetensors import SafetensorError, safe_open

    if file.stat().st_size == 0:
        raise HuginnError(f"{file} is empty; copy or re-download the checkpoint's weights")
    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HuginnError(
            f"{file} is not a readable safetensors file ({reason}): truncated or corrupt; "
            "copy or re-download the checkpoint's weights"
        ) from None


def check_weights(folder: Path) -> None:
    """The folder's weight files exist and their safetensors headers read (transformers' file names)."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        check_safetensors(single)
    elif index.is_file():
        weight_map = read_config_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HuginnError(f"{index} has no weight_map; re-export the checkpoint")
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise HuginnError(f"{folder / shard} (listed in {index.name}) is missing; copy all the weight shards")
            check_safetensors(folder / shard)
    elif not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise HuginnError(
            f"{folder} has no weights (model.safetensors); copy the checkpoint's weights into it or re-export it"
        )


def check_checkpoint(path: str | Path, read_config: bool = True) -> RavenConfig | None:
    """Everything about a huginn checkpoint folder that can be checked without loading its weights:
    its config.json (unless `read_config` is False: the caller has a config) and its weight files."""
    folder = Path(path)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file"
        raise HuginnError(
            f"checkpoint {folder} {what}; pass a checkpoint folder (with config.json and model.safetensors)"
        )
    config = None
    if read_config:
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise HuginnError(
                f"{folder} is not a checkpoint folder (no config.json); pass a folder written by save_pretrained"
            )
        config = huginn_config(read_config_json(cfg_file), cfg_file)
    check_weights(folder)
    return config


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_load_report(enabled: bool = True) -> Iterator[None]:
    """Drop transformers' multi-line load report while loading (callers report in one line). A
    filter, not a higher log level: transformers logs more (a tensor-parallel check) at a set level."""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    if enabled:
        logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _shape(shape: Any) -> str:
    return "x".join(str(n) for n in shape)


def load_problems(
    info: dict[str, Any],
    optional: Collection[str] = (),
    mismatched: bool = True,
    extra_ok: Collection[str] | None = None,
) -> list[str]:
    """Parts of a one-line message for transformers' loading info: missing weights (but those in
    `optional`), unexpected ones (but those in `extra_ok`, default `optional`) and mis-shaped ones
    (with the checkpoint's and the config's shape of the first ones)."""
    parts = []
    extra_ok = optional if extra_ok is None else extra_ok
    missing = sorted(k for k in info.get("missing_keys", ()) if k not in optional)
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if k not in extra_ok)
    if missing:
        parts.append(f"missing weights {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected weights {_names(unexpected)}")
    wrong = sorted(info.get("mismatched_keys", ()), key=str) if mismatched else []
    if wrong:
        named = [
            f"{m[0]} (checkpoint {_shape(m[1])}, config {_shape(m[2])})"
            if isinstance(m, tuple) and len(m) == 3
            else str(m)
            for m in wrong
        ]
        parts.append(f"weights of the wrong shape {_names(named, 3)}")
    return parts


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None) -> RavenForCausalLM:
    """A huginn checkpoint folder as a `RavenForCausalLM` in eval mode, checked first (one-line errors)."""
    import huginn.hf  # noqa: F401  (registers the Auto classes)
    from huginn.hf.modeling import RavenForCausalLM

    check_checkpoint(path)
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    return RavenForCausalLM.from_pretrained(str(path), **kwargs).eval()
