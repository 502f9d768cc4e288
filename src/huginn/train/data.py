"""Data sources for the training loop: built-in corpus, packed token shards, chat jsonl for fine-tuning.

Every source answers `batch(step, micro) -> (inputs, labels, row_ids)` for this rank: inputs and
labels are (micro_batch, seq_len) with labels already shifted (-100 = no loss), and `row_ids` are the
rows' global indices (they seed each row's initial state, so that results do not depend on how a
global batch is split over ranks and micro-batches). `val_batches()` yields this rank's share of the
held-out rows. `state_dict()`/`load_state_dict()` carry the position for exact resume.

Row layout of one optimizer step with global batch G: rows step*G + [0, G); rank r's micro-batch i
holds rows (i * world + r) * mb + [0, mb). Non-goals: tokenization of raw text (`huginn data`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.train import corpus

Batch = tuple[Tensor, Tensor, Tensor]


class Layout:
    """Which global rows a rank's micro-batch holds."""

    def __init__(self, global_batch: int, micro: int, rank: int, world: int):
        self.global_batch, self.micro, self.rank, self.world = global_batch, micro, rank, world
        self.accum = global_batch // (micro * world)

    def row_ids(self, step: int, micro_index: int) -> Tensor:
        first = step * self.global_batch + (micro_index * self.world + self.rank) * self.micro
        return torch.arange(first, first + self.micro)

    def val_ids(self, n: int) -> list[Tensor]:
        # whole micro-batches on every rank: sharded models need every rank in every forward
        unit = self.micro * self.world
        n = max(unit, n // unit * unit)
        mine = torch.arange(n)[self.rank :: self.world]
        return list(mine.split(self.micro)) if len(mine) else []


class BuiltinSource:
    """Generated task rows (`huginn.train.corpus`), loss on the answers only; stateless: a row is a
    function of its index."""

    vocab_size = corpus.VOCAB_SIZE

    def __init__(
        self, layout: Layout, seq_len: int, seed: int, val_samples: int, task: str, difficulty: tuple[int, int]
    ):
        self.layout, self.seq_len, self.seed, self.val_samples = layout, seq_len, seed, val_samples
        self.task, self.difficulty = task, difficulty

    def _rows(self, ids: Tensor) -> Batch:
        r = corpus.rows(self.seed, ids.tolist(), self.seq_len + 1, self.task, self.difficulty)
        return r[:, :-1], corpus.answer_labels(r, self.task), ids

    def batch(self, step: int, micro: int) -> Batch:
        return self._rows(self.layout.row_ids(step, micro))

    def val_batches(self) -> Iterator[Batch]:
        for ids in self.layout.val_ids(self.val_samples):
            yield self._rows(ids + corpus.VAL_OFFSET)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PackedSource:
    """Token shards through `huginn.data.loader.PackedLoader` (rows of seq_len + 1 tokens).

    Refused at construction: data whose rows are not `seq_len` + 1 tokens long, a global batch
    larger than the training rows (a step would repeat rows), and validation data with fewer rows
    than one validation batch (validation would see nothing and report a loss of 0)."""

    def __init__(self, layout: Layout, path, val_path, seed: int, val_samples: int, seq_len: int):
        try:
            from huginn.data.loader import PackedLoader
        except ImportError:
            raise HuginnError(
                "data.kind 'packed' needs huginn.data.loader, which this install lacks; use data.kind builtin"
            ) from None
        self.layout, self.val_samples = layout, val_samples
        self.loader = PackedLoader(
            path, layout.micro, rank=layout.rank, world_size=layout.world, seed=seed, shuffle=True, loop=True
        )
        self.val_loader_args = (val_path or path, layout.micro, layout.rank, layout.world, seed)
        self.it = iter(self.loader)
        self.seq_len = self.loader.seq_len
        _check_seq_len("data.path", path, self.seq_len, seq_len)
        if self.loader.num_rows < layout.global_batch:
            raise HuginnError(
                f"train.batch_size {layout.global_batch} exceeds the {self.loader.num_rows} rows of data.path {_show(path)}; "
                f"lower train.batch_size to at most {self.loader.num_rows} or add data"
            )
        if val_path:
            val = PackedLoader(val_path, layout.micro, rank=layout.rank, world_size=layout.world, shuffle=False)
            _check_seq_len("data.val_path", val_path, val.seq_len, seq_len)
            unit = layout.micro * layout.world
            if val.num_rows < unit:
                raise HuginnError(
                    f"data.val_path {_show(val_path)} holds {val.num_rows} rows, fewer than one validation batch of {unit} "
                    f"(micro-batch {layout.micro} x {layout.world} processes); add validation rows or lower train.micro_batch_size"
                )

    def batch(self, step: int, micro: int) -> Batch:
        row = next(self.it)
        return row[:, :-1], row[:, 1:], self.layout.row_ids(step, micro)

    def val_batches(self) -> Iterator[Batch]:
        from huginn.data.loader import PackedLoader

        path, mb, rank, world, seed = self.val_loader_args
        loader = PackedLoader(path, mb, rank=rank, world_size=world, seed=seed, shuffle=False, loop=False)
        seen = 0
        for i, row in enumerate(loader):
            if seen and seen >= self.val_samples // world:  # at least one batch, the same count on every rank
                break
            seen += len(row)
            yield row[:, :-1], row[:, 1:], torch.arange(len(row)) + corpus.VAL_OFFSET + i * mb

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.it = iter(self.loader)


def _show(path) -> str:
    return str(path) if isinstance(path, str) else ", ".join(map(str, path))


def _check_seq_len(key: str, path, data_len: int, seq_len: int) -> None:
    if data_len != seq_len:
        raise HuginnError(
            f"data.seq_len is {seq_len} but the rows of {key} {_show(path)} hold {data_len} tokens (+1); "
            f"set data.seq_len={data_len}, or retokenize with `huginn data tokenize --seq-len {seq_len}`"
        )


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of assistant turns (what gets a loss).

    Rendering the prefix before and after each assistant turn with the chat template marks exactly
    the characters that turn adds (its content and end-of-turn marker), for any template.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(after) or not after.startswith(before):
            raise HuginnError(
                "the tokenizer's chat template does not render conversations prefix by prefix; cannot find assistant turns"
            )
        spans.append((len(before), len(after)))
    return text, spans


def encode_chat(tokenizer, messages: list[dict[str, str]], length: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) of length+1: tokens of the templated conversation, mask True on assistant tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][: length + 1]
    mask = [any(a <= s < b for a, b in spans) for s, _ in enc["offset_mapping"][: length + 1]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(ids)
    ids = ids + [pad] * (length + 1 - n)
    mask = mask + [False] * (length + 1 - n)
    return torch.tensor(ids), torch.tensor(mask)


class ChatSource:
    """Fine-tuning rows from a jsonl of {"messages": [{"role", "content"}, ...]}: loss on assistant
    tokens only; one conversation per row, truncated or right-padded to seq_len + 1 tokens."""

    def __init__(self, layout: Layout, path, val_path, tokenizer, seq_len: int, seed: int, val_samples: int):
        self.layout, self.seq_len, self.seed, self.val_samples = layout, seq_len, seed, val_samples
        self.ids, self.mask = self._load(path, tokenizer)
        if val_path:
            self.val_ids, self.val_mask = self._load(val_path, tokenizer)
        else:
            self.val_ids, self.val_mask = self.ids, self.mask

    def _load(self, path, tokenizer) -> tuple[Tensor, Tensor]:
        files = [path] if isinstance(path, str) else list(path)
        rows, masks = [], []
        for f in files:
            p = Path(f)
            if not p.is_file():
                raise HuginnError(f'chat data {str(p)!r} does not exist; pass a jsonl of {{"messages": [...]}} rows')
            for n, line in enumerate(p.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    messages = json.loads(line)["messages"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise HuginnError(f"{p}:{n} is not a JSON object with a 'messages' list") from None
                ids, mask = encode_chat(tokenizer, messages, self.seq_len)
                if mask[1:].any():
                    rows.append(ids)
                    masks.append(mask)
        if not rows:
            raise HuginnError(f"chat data {files} holds no conversation with an assistant turn")
        return torch.stack(rows), torch.stack(masks)

    def _rows(self, ids: Tensor, table: Tensor, mask: Tensor, shuffle: bool) -> Batch:
        n = len(table)
        if shuffle:
            # a fresh permutation per epoch, a function of (seed, epoch): stateless resume
            picks = []
            for i in ids.tolist():
                epoch, pos = divmod(i, n)
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
                picks.append(int(perm[pos]))
        else:
            picks = [i % n for i in ids.tolist()]
        rows, m = table[picks], mask[picks]
        labels = rows[:, 1:].masked_fill(~m[:, 1:], -100)
        return rows[:, :-1], labels, ids

    def batch(self, step: int, micro: int) -> Batch:
        return self._rows(self.layout.row_ids(step, micro), self.ids, self.mask, True)

    def val_batches(self) -> Iterator[Batch]:
        for ids in self.layout.val_ids(min(self.val_samples, len(self.val_ids))):
            inputs, labels, _ = self._rows(ids, self.val_ids, self.val_mask, False)
            yield inputs, labels, ids + corpus.VAL_OFFSET

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
