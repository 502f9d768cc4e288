"""The lm-eval model `huginn`: any checkpoint huginn loads, at a chosen depth, with adaptive exits.

    python -m huginn.eval --model huginn --model_args pretrained=DIR,num_steps=32 --tasks T

model_args (lm-eval's `key=value,...`; `HuginnLM(...)` takes the same as keywords):

| name | meaning |
| --- | --- |
| `pretrained` | a checkpoint folder, or a loaded model (`RavenForCausalLM` / `RecurrentLM`) |
| `tokenizer` | a tokenizer folder or object (default: the checkpoint's own) |
| `num_steps` (alias `mean_recurrence`) | core steps per token (the maximum with an exit); default: the config's mean_recurrence |
| `criterion`, `exit_threshold` | adaptive compute, as `huginn generate --exit criterion:threshold` |
| `cache` | the KV-cache policy (`huginn generate --cache`); default: every (step, layer) its own slot (exact) |
| `init_scale` | initial state noise; default 0: a zero state, deterministic scores |
| `continuous` | generation: each token starts from the previous token's final latent |
| `dtype` | float32 (default), bfloat16, float16 or float64 for a folder |
| `batch_size`, `max_batch_size` | requests per forward; `auto`: as many as fit a quarter of free memory |
| `max_length` | longest input (default: the model's block_size); rolling windows use it |
| `max_gen_toks` | default new tokens for generate_until (256) |
| `compile` | decode generate_until through compiled graphs (`huginn generate --compile`) |
| `add_bos_token` | as lm-eval's hf model: None keeps the tokenizer's default |
| `device` | where a folder's model goes (cpu, cuda) |

`loglikelihood` scores through `huginn.eval.score` (contexts shared by several continuations run once
at fixed depth), `loglikelihood_rolling` cuts texts into lm-eval's own disjoint rolling windows and
scores them the same way, `generate_until` runs `huginn.infer.options.generate_with` on left-padded
batches (lm-eval's `until`, `max_gen_toks`, `temperature`, `do_sample`, `top_k`, `top_p`). Chat
templates come from the tokenizer (`--apply_chat_template`, `--system_instruction`,
`--fewshot_as_multiturn`). `set_depth` changes the depth of a loaded model (the depth sweep of
`huginn eval` loads once); `tally` counts tokens and core steps. Non-goals: data parallelism across
processes, seq2seq models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM

from huginn.errors import HuginnError
from huginn.eval.score import Pair, Tally, left_pad, loglikelihoods
from huginn.infer.generate import Depth, Stopping
from huginn.infer.options import CacheSpec, ExitRule, GenerationOptions, generate_with
from huginn.infer.sampling import Sampling

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
MODEL_ARGS = (
    "pretrained",
    "tokenizer",
    "num_steps",
    "mean_recurrence",
    "criterion",
    "exit_threshold",
    "cache",
    "init_scale",
    "continuous",
    "dtype",
    "batch_size",
    "max_batch_size",
    "max_length",
    "max_gen_toks",
    "compile",
    "add_bos_token",
    "device",
)
GEN_KWARGS = ("until", "max_gen_toks", "temperature", "do_sample", "top_k", "top_p")


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise HuginnError(f"model_arg {name} must be true or false, got {value!r}")


def _as_int(name: str, value: object, least: int = 1) -> int:
    n: int | None = None
    if not isinstance(value, bool):
        try:
            x = float(str(value))
            n = int(x) if x == int(x) else None
        except (TypeError, ValueError, OverflowError):
            n = None
    if n is None or n < least:
        raise HuginnError(f"model_arg {name} must be an integer >= {least}, got {value!r}")
    return n


def _unknown_args(unknown: dict[str, Any]) -> None:
    import difflib

    # lm-eval passes these to every model; they mean nothing here
    ignored = {"trust_remote_code", "parallelize", "revision", "use_fast_tokenizer"}
    bad = sorted(k for k, v in unknown.items() if k not in ignored and v is not None)
    if bad:
        close = difflib.get_close_matches(bad[0], MODEL_ARGS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(MODEL_ARGS)}"
        raise HuginnError(f"unknown model_arg {bad[0]!r} for the huginn model; {hint}")


@dataclass(frozen=True)
class DepthSetting:
    """Depth of scoring and generation: core steps (the maximum with an exit) and the exit rule."""

    num_steps: int
    exit: ExitRule = field(default_factory=ExitRule)


def load_model_and_tokenizer(pretrained: str | Path, tokenizer: Any, dtype: torch.dtype, device: str):
    """A checkpoint folder and its tokenizer (or `tokenizer`), with one-line errors."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from huginn.checkpoint import check_checkpoint, load_checkpoint, quiet_load_report

    hf_logging.disable_progress_bar()
    path = Path(pretrained)
    check_checkpoint(path)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tok_path = Path(tokenizer) if tokenizer is not None else path
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
        except Exception:  # transformers raises several types for "no tokenizer here"
            raise HuginnError(
                f"no tokenizer found in {tok_path}; pass tokenizer=DIR (a folder with tokenizer.json)"
            ) from None
    with quiet_load_report():
        model = load_checkpoint(path, dtype=dtype)
    torch.nn.Module.to(model, torch.device(device))
    return model, tokenizer


def auto_batch_size(model, seq_len: int, num_steps: int, most: int) -> int:
    """The largest power of two <= `most` whose cache and activations fit a quarter of free memory."""
    cfg = model.model_config
    param = next(model.parameters())
    if param.device.type == "cuda":
        free = torch.cuda.mem_get_info(param.device)[0]
    else:
        free = 8 << 30
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
        except OSError:
            pass
    slots = cfg.n_layers_in_prelude + cfg.n_layers_in_coda + num_steps * cfg.n_layers_in_recurrent_block
    per_row = param.element_size() * seq_len * (2 * slots * cfg.n_kv_heads * cfg.head_dim + 24 * cfg.n_embd)
    per_row += 8 * seq_len * cfg.padded_vocab_size  # logits and their log-softmax
    n = 1
    while n * 2 <= most and (n * 2) * per_row <= free // 4:
        n *= 2
    return n


class HuginnLM(TemplateLM):
    """lm-eval's model interface over a huginn model; see the module docstring."""

    backend = "causal"

    def __init__(
        self,
        pretrained: Any = None,
        tokenizer: Any = None,
        num_steps: int | str | None = None,
        mean_recurrence: int | str | None = None,
        criterion: str | None = None,
        exit_threshold: float | str | None = None,
        cache: str | None = None,
        init_scale: float | str = 0.0,
        continuous: bool | str = False,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_batch_size: int | str = 64,
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        compile: bool | str = False,
        add_bos_token: bool | str | None = None,
        device: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        _unknown_args(unknown)
        if pretrained is None:
            raise HuginnError("the huginn model needs pretrained=DIR (a checkpoint folder)")
        if num_steps is not None and mean_recurrence is not None and str(num_steps) != str(mean_recurrence):
            raise HuginnError("num_steps and mean_recurrence are the same setting; pass one")
        steps = num_steps if num_steps is not None else mean_recurrence
        if str(dtype) not in DTYPES:
            raise HuginnError(f"model_arg dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        # every setting is checked before the model loads (a mistake costs nothing)
        self._steps = None if steps is None else _as_int("num_steps", steps)
        exit_rule = self._exit_rule(criterion, exit_threshold)
        self.cache_spec = CacheSpec.parse(cache)
        try:
            self.init_scale = float(str(init_scale))
        except ValueError:
            self.init_scale = -1.0
        if not self.init_scale >= 0:  # also NaN
            raise HuginnError(
                f"model_arg init_scale must be a number >= 0 (0: a zero initial state), got {init_scale!r}"
            )
        self.continuous = _as_bool("continuous", continuous)
        self.compile = _as_bool("compile", compile)
        self.add_bos_token = None if add_bos_token is None else _as_bool("add_bos_token", add_bos_token)
        self._auto_batch = str(batch_size).startswith("auto")
        self._batch_size = 1 if self._auto_batch else _as_int("batch_size", batch_size)
        self.max_batch_size = _as_int("max_batch_size", max_batch_size)
        self._max_gen_toks = _as_int("max_gen_toks", max_gen_toks)
        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("no CUDA device here; the huginn model runs on the CPU")
            device = "cpu"  # lm-eval's command line asks for cuda by default
        if isinstance(pretrained, (str, Path)):
            self.model, self.tokenizer = load_model_and_tokenizer(pretrained, tokenizer, DTYPES[str(dtype)], device)
            self.pretrained_name = str(pretrained)
        else:
            if not hasattr(pretrained, "model_config") or not hasattr(pretrained, "recur"):
                raise HuginnError(
                    f"pretrained must be a checkpoint folder or a huginn model, got {type(pretrained).__name__}"
                )
            if tokenizer is None or isinstance(tokenizer, (str, Path)):
                from transformers import AutoTokenizer

                if tokenizer is None:
                    raise HuginnError("a model object needs tokenizer=... (a folder or a tokenizer object)")
                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
            self.model, self.tokenizer = pretrained.eval(), tokenizer
            self.pretrained_name = type(pretrained).__name__
        cfg = self.model.model_config
        self.cache_spec.check(cfg.n_layers_in_recurrent_block)
        self._max_length = cfg.block_size if max_length is None else _as_int("max_length", max_length)
        if self._max_length > cfg.block_size:
            raise HuginnError(f"max_length {self._max_length} exceeds the model's block size {cfg.block_size}")
        if len(self.tokenizer) > cfg.vocab_size:
            raise HuginnError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model only {cfg.vocab_size}; "
                "pass the model's own tokenizer"
            )
        self.setting = DepthSetting(self._steps or cfg.mean_recurrence, exit_rule)
        self._device = next(self.model.parameters()).device
        self.tally = Tally()
        self.progress: Callable[[int], None] | None = None  # called with the number of requests done
        self._stops: dict[tuple[str, ...], Any] = {}

    # --- depth ------------------------------------------------------------------------------------
    @staticmethod
    def _exit_rule(criterion: str | None, threshold: object) -> ExitRule:
        if criterion is None:
            if threshold is not None:
                raise HuginnError("exit_threshold needs criterion=NAME (e.g. criterion=kl,exit_threshold=5e-4)")
            return ExitRule()
        if threshold is None or threshold == "auto":
            return ExitRule(str(criterion))
        try:
            value = float(str(threshold))
        except ValueError:
            raise HuginnError(f"model_arg exit_threshold must be a number or 'auto', got {threshold!r}") from None
        return ExitRule(str(criterion), value)

    def set_depth(self, num_steps: int, exit: ExitRule | None = None) -> None:
        """Score and generate at `num_steps` (the maximum with an adaptive `exit`) from now on."""
        self.setting = DepthSetting(_as_int("num_steps", num_steps), exit or ExitRule())

    def depth(self) -> Depth:
        """The `Depth` of one batch (a fresh criterion: criteria keep per-row state)."""
        e = self.setting.exit
        return Depth(self.setting.num_steps, e.make(), e.min_steps, e.check_every, False, self.init_scale, e.in_prefill)

    # --- lm-eval's model interface ------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return int(eos) if eos is not None else 0

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and self.tokenizer.bos_token and string.startswith(self.tokenizer.bos_token):
            kw = {"add_special_tokens": False}  # the chat template wrote the BOS already
        return list(self.tokenizer.encode(string, **kw))

    def tok_decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise HuginnError("the tokenizer has no chat template; drop --apply_chat_template or pass tokenizer=DIR")
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _batch_for(self, seq_len: int) -> int:
        if not self._auto_batch:
            return self._batch_size
        return auto_batch_size(self.model, seq_len, self.setting.num_steps, self.max_batch_size)

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress(n)

    def _truncate(self, context: list[int], continuation: list[int]) -> Pair:
        """lm-eval's rule: the input `(context + continuation)[:-1]` keeps its last max_length tokens."""
        if len(continuation) > self.max_length:
            raise HuginnError(
                f"a continuation of {len(continuation)} tokens is longer than max_length {self.max_length}; "
                "raise max_length (up to the block size)"
            )
        keep = self.max_length + 1 - len(continuation)
        return context[-keep:], continuation

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)  # progress is `self.progress`

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = [self._truncate(list(c), list(x)) for _, c, x in requests]
        if not pairs:
            return []
        longest = max(len(c) + len(x) for c, x in pairs)
        results = loglikelihoods(
            self.model,
            pairs,
            self.depth(),
            self._batch_for(longest),
            self.cache_spec.policy,
            self.tally,
            self._advance,
        )
        for (key, _, _), res in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def rolling_windows(self, text: str) -> list[Pair]:
        """lm-eval's disjoint rolling windows of `text` (context 1, windows of max_length)."""
        windows = lm_utils.get_rolling_token_windows(
            token_list=self.tok_encode(text),
            prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length,
            context_len=1,
        )
        return [lm_utils.make_disjoint_window(w) for w in windows]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[int, Pair]] = []
        for i, req in enumerate(requests):
            windows.extend((i, w) for w in self.rolling_windows(req.args[0]))
        progress, self.progress = self.progress, None  # progress counts documents, not windows
        try:
            scored = self._loglikelihood_tokens([(None, c, x) for _, (c, x) in windows]) if windows else []
        finally:
            self.progress = progress
        totals = [0.0] * len(requests)
        for (i, _), (lp, _) in zip(windows, scored, strict=True):
            totals[i] += lp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        self._advance(len(requests))
        return totals

    def _options(self, gen_kwargs: dict[str, Any]) -> tuple[GenerationOptions, list[str], int]:
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            log.warning("huginn ignores the generation kwargs %s", ", ".join(unknown))
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = _as_int("max_gen_toks", gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        sampling = Sampling(
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=gen_kwargs.get("top_k") if do_sample else None,
            top_p=gen_kwargs.get("top_p") if do_sample else None,
        )
        options = GenerationOptions(
            num_steps=self.setting.num_steps,
            exit=self.setting.exit,
            cache=self.cache_spec,
            sampling=sampling,
            continuous=self.continuous,
            init_scale=self.init_scale,
            compile=self.compile,
        )
        return options, until, max_new

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for idx in groups.values():
            options, until, max_new = self._options(requests[idx[0]].args[1])
            encoded = {i: self.tok_encode(requests[i].args[0]) for i in idx}
            order = sorted(idx, key=lambda i: (-len(encoded[i]), i))
            size = self._batch_for(max(len(v) for v in encoded.values()) + max_new)
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                texts = self.generate_batch([encoded[i] for i in batch], options, until, max_new)
                for i, text in zip(batch, texts, strict=True):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                self._advance(len(batch))
        return [r if r is not None else "" for r in results]

    def generate_batch(
        self, prompts: list[list[int]], options: GenerationOptions, until: list[str], max_new: int
    ) -> list[str]:
        """Continuations of token prompts (left-padded into one batch), each cut at its first stop string."""
        room = self.max_length - max_new
        if room < 1:
            raise HuginnError(f"max_gen_toks {max_new} leaves no room for a prompt in max_length {self.max_length}")
        prompts = [p[-room:] for p in prompts]
        ids, mask = left_pad(prompts, pad=self.tokenizer.pad_token_id or 0)
        eos = self.tokenizer.eos_token_id
        stop = self._stop_strings(tuple(until)) if until else None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos or 0)
        stopping = Stopping(max_new, () if eos is None else (int(eos),), stop, int(pad))
        with torch.no_grad():
            out = generate_with(self.model, ids.to(self.device), options, stopping, attention_mask=mask.to(self.device))
        steps = out.compute_steps
        self.tally.tokens += int((steps > 0).sum())
        self.tally.step_tokens += int(steps.sum())
        texts = []
        for row in out.sequences[:, ids.shape[1] :].tolist():
            text = self.tok_decode(row)
            for s in until:
                if s:
                    text = text.split(s)[0]
            texts.append(text)
        return texts

    def _stop_strings(self, until: tuple[str, ...]):
        """transformers' stop-string test for `until`, built once per list (it tabulates the vocabulary)."""
        if until not in self._stops:
            from transformers.generation.stopping_criteria import StopStringCriteria

            self._stops[until] = StopStringCriteria(self.tokenizer, list(until))
        return self._stops[until]

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model": "huginn",
            "pretrained": self.pretrained_name,
            "num_steps": self.setting.num_steps,
            "exit": str(self.setting.exit),
        }
