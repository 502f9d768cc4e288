"""Export a training run to the published Huginn-0125 checkpoint format.

Reads RUN/model_config.json and the newest checkpoint, builds `RavenForCausalLM` and calls
`save_pretrained`, so the result loads with `AutoModelForCausalLM.from_pretrained(OUT)` after
`import huginn`. The run's tokenizer goes along: the character tokenizer for the built-in corpus,
the fine-tuning tokenizer otherwise. Non-goal: converting other frameworks' checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import yaml

from huginn.config import ModelConfig
from huginn.errors import HuginnError
from huginn.model.recurrent import RecurrentLM
from huginn.outdir import check_writable_out
from huginn.train import checkpoint
from huginn.train.parallel import Dist


def load_run_model(run: Path) -> tuple[RecurrentLM, dict]:
    """The newest checkpoint's model (fp32, CPU) and the run's config as a dict."""
    run = Path(run)
    if not (run / "model_config.json").is_file() or not (run / "config.yaml").is_file():
        raise HuginnError(f"{run} is not a huginn run directory (no model_config.json / config.yaml)")
    ckpt = checkpoint.latest(run)
    if ckpt is None:
        raise HuginnError(f"{run} holds no checkpoint yet; train at least one step first")
    mc = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
    model = RecurrentLM()
    model.build(mc)
    checkpoint.load_model_only(ckpt, model)
    return model, yaml.safe_load((run / "config.yaml").read_text())


def export_run(run: Path, out: Path) -> Path:
    """Write the newest checkpoint of `run` to `out` (new or empty; checked for writability first)."""
    from huginn.hf import RavenConfig, RavenForCausalLM

    out = check_writable_out(out, "output folder")
    if out.exists() and any(out.iterdir()):
        raise HuginnError(f"{out} exists and is not empty; pick a new output folder")
    model, cfg = load_run_model(run)
    hf = RavenForCausalLM(RavenConfig.from_model_config(model.model_config))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise HuginnError(
            f"run weights do not fit the published model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    data = cfg.get("data", {})
    if data.get("kind") == "builtin":
        from huginn.train.corpus import char_tokenizer

        char_tokenizer().save_pretrained(str(tmp))
    elif data.get("tokenizer") or cfg.get("model", {}).get("init_from"):
        from transformers import AutoTokenizer

        # the weights are the export; a missing tokenizer is not fatal
        with contextlib.suppress(OSError, ValueError):
            AutoTokenizer.from_pretrained(data.get("tokenizer") or cfg["model"]["init_from"]).save_pretrained(str(tmp))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


__all__ = ["Dist", "export_run", "load_run_model"]
