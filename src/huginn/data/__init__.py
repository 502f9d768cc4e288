"""Data pipeline: tokenizer training, parquet -> packed rows, mixing, shuffling, the training loader.

Modules: `tokenizer` (train/check a Huginn-style BPE tokenizer), `sources` (validate parquet
inputs), `packing` (documents -> rows of L+1 ids), `tokenize` (the parallel resumable job),
`mixing` (weighted sources, train/validation split), `shuffle` (deterministic global shuffle),
`loader` (`PackedLoader`, sharded and resumable), `stats` (token statistics), `scaleout` (the
same job on datatrove executors). Nothing here is imported by `huginn` at start-up.
"""
