"""`PackedLoader`: batches of packed rows, sharded across ranks and workers, with exact resume.

    loader = PackedLoader("data/train", batch_size=8, rank=rank, world_size=world, seed=0)
    for batch in loader:              # LongTensor (8, L+1); inputs = batch[:, :-1], labels = batch[:, 1:]
        ...
        ckpt["data"] = loader.state_dict()        # plain JSON-able dict
    loader.load_state_dict(ckpt["data"])          # the next batch is the one that would have come

The order is a pure function of (seed, epoch): epoch e visits all row groups of all files in a
seeded permutation, and shuffles rows inside consecutive windows of `window` row groups (a
block shuffle: reading stays sequential; `huginn data shuffle` provides the global shuffle on
disk). Epochs are concatenated into one stream of rows. Rank r's k-th batch is stream rows
[(k*W + r)*B, (k*W + r + 1)*B): ranks take interleaved, disjoint, gap-free slices, and the
stream position is the whole state. Resume therefore needs no RNG state, and also works with
another world size or batch size whenever the rows consumed divide evenly by the new W*B.

With `num_workers > 0` a torch `DataLoader` runs the reads in worker processes: worker w makes
batches k = w, w+nw, ... and the DataLoader returns them round-robin, i.e. in the same order as
without workers. With `loop=False` the loader stops after one epoch's whole global steps (every
rank gets the same number of batches; the last N mod (B*W) rows of the epoch are not visited).

Non-goals: per-document attention masks, variable-length rows, remote storage.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from huginn.errors import HuginnError

STATE_VERSION = 1


def dataset_files(path_or_paths: str | Path | Sequence[str | Path]) -> list[str]:
    """Parquet files of datasets: directories with a manifest (its file order) or parquet files."""
    from huginn.data.tokenize import read_manifest

    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if not paths:
        raise HuginnError("no data paths given; pass a dataset directory written by `huginn data tokenize`")
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [str(p / f["name"]) for f in read_manifest(p)["files"]]
        elif p.suffix == ".parquet" and p.is_file():
            files.append(str(p))
        else:
            raise HuginnError(f"data path {p} is neither a dataset directory nor a parquet file")
    return files


class _Reader:
    """Row-group index over files plus a small cache of decoded row groups."""

    def __init__(self, files: Sequence[str], cache_groups: int):
        import pyarrow.parquet as pq

        from huginn.data.packing import COLUMN

        self.files = list(files)
        rg_file, rg_index, rg_rows = [], [], []
        for i, f in enumerate(self.files):
            md = pq.ParquetFile(f).metadata
            if COLUMN not in md.schema.to_arrow_schema().names:
                raise HuginnError(f"{f} has no {COLUMN!r} column; pass data written by `huginn data tokenize`")
            for g in range(md.num_row_groups):
                if md.row_group(g).num_rows:
                    rg_file.append(i)
                    rg_index.append(g)
                    rg_rows.append(md.row_group(g).num_rows)
        self.rg_file = np.array(rg_file, np.int64)
        self.rg_index = np.array(rg_index, np.int64)
        self.rg_rows = np.array(rg_rows, np.int64)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_groups = cache_groups
        self._handles: OrderedDict[int, Any] = OrderedDict()  # pyarrow ParquetFile (untyped library)

    def group(self, g: int) -> np.ndarray:
        """Decoded rows of global row group g, shape (rows, row_len), int32."""
        hit = self._cache.get(g)
        if hit is not None:
            self._cache.move_to_end(g)
            return hit
        import pyarrow.parquet as pq

        from huginn.data.packing import COLUMN, table_to_rows

        fi = int(self.rg_file[g])
        pf = self._handles.get(fi)
        if pf is None:
            pf = self._handles[fi] = pq.ParquetFile(self.files[fi])
            if len(self._handles) > 16:
                self._handles.popitem(last=False)
        rows = table_to_rows(pf.read_row_group(int(self.rg_index[g]), columns=[COLUMN]))
        self._cache[g] = rows
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return rows


class PackedLoader:
    """Iterates LongTensor batches (batch_size, L+1) of packed rows; see the module docstring."""

    def __init__(
        self,
        path_or_paths: str | Path | Sequence[str | Path],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        loop: bool = True,
        num_workers: int = 0,
        window: int = 8,
    ):
        if batch_size < 1:
            raise HuginnError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise HuginnError(f"rank {rank} is outside world_size {world_size}")
        if window < 1 or num_workers < 0:
            raise HuginnError("window must be >= 1 and num_workers >= 0")
        self.files = dataset_files(path_or_paths)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.loop = seed, shuffle, loop
        self.num_workers, self.window = num_workers, window
        self._reader = _Reader(self.files, cache_groups=2 * window)
        self.num_rows = int(self._reader.rg_rows.sum())
        if self.num_rows == 0:
            raise HuginnError(f"the data at {path_or_paths} has no rows")
        self.row_len = self._reader.group(0).shape[1]
        self.seq_len = self.row_len - 1
        self._fingerprint = hashlib.sha256(
            "\n".join(f"{Path(f).name}:{n}" for f, n in zip(self.files, self._rows_per_file())).encode()
        ).hexdigest()[:16]
        self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._block_perm: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._next = 0  # index of this rank's next batch

    # ------------------------------------------------------------------ order
    def _rows_per_file(self) -> list[int]:
        counts = np.zeros(len(self.files), np.int64)
        np.add.at(counts, self._reader.rg_file, self._reader.rg_rows)
        return counts.tolist()

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank per epoch (whole global steps)."""
        return self.num_rows // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        if self.loop:
            raise TypeError("a looping PackedLoader is endless; use batches_per_epoch")
        return self.batches_per_epoch

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row-group order, first stream row of each block, its row groups' starts within the order)."""
        hit = self._epoch_cache.get(e)
        if hit is None:
            n = len(self._reader.rg_rows)
            order = np.random.default_rng([self.seed, e]).permutation(n) if self.shuffle else np.arange(n)
            group_starts = np.concatenate([[0], np.cumsum(self._reader.rg_rows[order])])
            block_starts = group_starts[:: self.window]
            if block_starts[-1] != group_starts[-1]:
                block_starts = np.concatenate([block_starts, group_starts[-1:]])
            self._epoch_cache = {e: (order, group_starts, block_starts)}  # keep one epoch
            hit = self._epoch_cache[e]
        return hit

    def _rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Rows at stream positions (epoch-concatenated), shape (len, row_len)."""
        out = np.empty((len(positions), self.row_len), np.int32)
        epochs, offsets = np.divmod(positions, self.num_rows)
        for e in np.unique(epochs):
            order, group_starts, block_starts = self._epoch(int(e))
            sel = np.nonzero(epochs == e)[0]
            blocks = np.searchsorted(block_starts, offsets[sel], side="right") - 1
            for b in np.unique(blocks):
                rows = sel[blocks == b]
                g0, g1 = int(b) * self.window, min((int(b) + 1) * self.window, len(order))
                local = offsets[rows] - block_starts[b]
                if self.shuffle:
                    local = self._perm(int(e), int(b), int(block_starts[b + 1] - block_starts[b]))[local]
                # map block-local row -> (group in order, row in group)
                gi = np.searchsorted(group_starts[g0 : g1 + 1], local + block_starts[b], side="right") - 1 + g0
                within = local + block_starts[b] - group_starts[gi]
                for g in np.unique(gi):
                    m = gi == g
                    out[rows[m]] = self._reader.group(int(order[g]))[within[m]]
        return out

    def _perm(self, e: int, b: int, n: int) -> np.ndarray:
        key = (e, b)
        p = self._block_perm.get(key)
        if p is None:
            p = self._block_perm[key] = np.random.default_rng([self.seed, e, b + 1]).permutation(n)
            if len(self._block_perm) > 4:
                self._block_perm.popitem(last=False)
        return p

    def batch(self, k: int):
        """This rank's k-th batch (a pure function of k), LongTensor (batch_size, L+1)."""
        start = (k * self.world_size + self.rank) * self.batch_size
        rows = self._rows_at(np.arange(start, start + self.batch_size, dtype=np.int64))
        return torch.from_numpy(rows.astype(np.int64))

    # ------------------------------------------------------------------ iteration
    def _end(self) -> int | None:
        return None if self.loop else self.batches_per_epoch

    def __iter__(self) -> Iterator:
        end = self._end()
        if self.num_workers == 0:
            while end is None or self._next < end:
                b = self.batch(self._next)
                self._next += 1
                yield b
            return
        stream = _WorkerStream(self, self._next, end)
        dl = tud.DataLoader(stream, batch_size=None, num_workers=self.num_workers, persistent_workers=False)
        for b in dl:  # round-robin over workers == batch order
            self._next += 1
            yield b

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The position (plain JSON-able); other fields guard against resuming on other data."""
        return {
            "version": STATE_VERSION,
            "next_batch": self._next,
            "rows_consumed": self._next * self.batch_size * self.world_size,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "rank": self.rank,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "window": self.window,
            "num_rows": self.num_rows,
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken (also after a change of world or batch size
        when the rows consumed split evenly into whole steps of the new size)."""
        if state.get("version") != STATE_VERSION:
            raise HuginnError(f"loader state version {state.get('version')} is not {STATE_VERSION}; cannot resume")
        for key in ("seed", "shuffle", "window", "num_rows", "fingerprint"):
            if state[key] != getattr(self, "_fingerprint" if key == "fingerprint" else key):
                raise HuginnError(
                    f"loader state was taken with another {key} ({state[key]}); resume on the same data and settings"
                )
        step = self.batch_size * self.world_size
        if state["rows_consumed"] % step:
            raise HuginnError(
                f"{state['rows_consumed']} rows consumed do not split into steps of {step} rows "
                f"(batch_size {self.batch_size} x world_size {self.world_size}); pick sizes that divide it"
            )
        self._next = state["rows_consumed"] // step


class _WorkerStream(tud.IterableDataset):
    """IterableDataset for DataLoader workers: worker w yields batches start+w, start+w+nw, ..."""

    def __init__(self, loader: PackedLoader, start: int, end: int | None):
        self.files, self.start, self.end = loader.files, start, end
        self.kw = dict(
            batch_size=loader.batch_size,
            rank=loader.rank,
            world_size=loader.world_size,
            seed=loader.seed,
            shuffle=loader.shuffle,
            loop=loader.loop,
            window=loader.window,
        )

    def __iter__(self):
        info = tud.get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        loader = PackedLoader(self.files, **self.kw)
        k = self.start + w
        while self.end is None or k < self.end:
            yield loader.batch(k)
            k += nw
