"""Run the tokenize-and-pack job on a cluster through datatrove executors (local, Slurm, Ray).

The cluster runs exactly the single-machine work units (`huginn.data.tokenize.run_unit`): the
driver plans the job (`prepare_job`, which validates every input first), datatrove task r of N
runs the units with index = r mod N that have no record yet, and a one-task follow-up step
writes the manifest. Output is byte-identical to `huginn data tokenize` for the same inputs and
settings, and both resume the same way (finished units are skipped), on top of datatrove's own
skipping of completed tasks.

    from huginn.data.scaleout import tokenize_with_datatrove
    tokenize_with_datatrove(["raw/"], "tok", "packed", seq_len=4096, executor="slurm", tasks=512,
                            executor_kwargs={"time": "4:00:00", "partition": "cpu", "cpus_per_task": 1})

datatrove is an optional extra (`pip install huginn[datatrove]`); nothing else imports it.

Non-goals: datatrove's own tokenizer steps (they write a different binary format).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huginn.errors import HuginnError


def _pipeline_step() -> Any:
    try:
        from datatrove.pipeline.base import PipelineStep
    except ImportError:  # the module stays importable; the functions below explain what to install
        return object
    return PipelineStep


# typed Any so that type checking passes with and without datatrove installed
PipelineStep: Any = _pipeline_step()


def _require() -> None:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise HuginnError("the datatrove engine is not installed; run `pip install 'huginn[datatrove]'`") from None


class PackUnits(PipelineStep):
    """datatrove step: task `rank` of `world_size` packs its share of the recorded job's units."""

    name = "huginn pack units"
    type = "Tokenizer"

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = str(out_dir)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from huginn.data import tokenize as tk

        settings, units, records = tk.load_job(self.out_dir)
        # One task per core, and a fresh tokenizer: a thread pool inherited through fork deadlocks.
        tk._worker_init(settings.tokenizer_dir, parallel=False)
        for u in units:
            if u.index % world_size == rank and u.index not in records:
                rec = tk.run_unit(u, settings, self.out_dir)
                self.stat_update("units")
                self.stat_update("tokens", value=rec["tokens"], unit="unit")
                self.stat_update("documents", value=rec["documents"], unit="unit")
        return iter(())


class WriteManifest(PipelineStep):
    """datatrove step (run with tasks=1, after PackUnits): checks every unit and writes the manifest."""

    name = "huginn write manifest"
    type = "Writer"

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = str(out_dir)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import shutil

        from huginn.data.tokenize import finalize_job

        shutil.rmtree(Path(self.out_dir) / ".tmp", ignore_errors=True)
        finalize_job(self.out_dir)
        return iter(())


_EXECUTORS = {"local": "LocalPipelineExecutor", "slurm": "SlurmPipelineExecutor", "ray": "RayPipelineExecutor"}


def tokenize_with_datatrove(
    inputs: Sequence[str],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    text_column: str = "text",
    seq_len: int = 4096,
    executor: str = "local",
    tasks: int = 4,
    workers: int = -1,
    logging_dir: str | Path | None = None,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
    unit_bytes: int = 64 << 20,
    add_bos: bool = True,
    executor_kwargs: dict | None = None,
) -> dict | None:
    """Plan the job here, pack on `executor` with `tasks` tasks, write the manifest in a dependent
    one-task step. Returns the manifest when the run is synchronous (local, ray), else None
    (Slurm: the manifest appears when the dependent job finishes)."""
    _require()
    import datatrove.executor as dx

    from huginn.data.tokenize import MANIFEST, prepare_job, read_manifest

    if executor not in _EXECUTORS:
        from huginn.errors import one_of

        raise one_of("datatrove executor", executor, _EXECUTORS)
    prepare_job(
        inputs,
        tokenizer_dir,
        out_dir,
        text_column=text_column,
        seq_len=seq_len,
        rows_per_file=rows_per_file,
        row_group_rows=row_group_rows,
        unit_bytes=unit_bytes,
        add_bos=add_bos,
    )
    cls = getattr(dx, _EXECUTORS[executor])
    logs = str(logging_dir or Path(out_dir) / ".progress" / "datatrove")
    kw = dict(executor_kwargs or {})
    if executor == "local":
        kw.setdefault("workers", workers)
        kw.setdefault("start_method", "fork")  # like the builtin path: no torch re-import per task
    pack = cls(pipeline=[PackUnits(str(out_dir))], tasks=tasks, logging_dir=f"{logs}/pack", **kw)
    if executor == "slurm":
        kw.setdefault("job_name", "huginn-manifest")
    final = cls(
        pipeline=[WriteManifest(str(out_dir))],
        tasks=1,
        logging_dir=f"{logs}/manifest",
        depends=pack,
        **{k: v for k, v in kw.items() if k != "workers"},
    )
    final.run()  # runs `pack` first (its dependency)
    return read_manifest(out_dir) if (Path(out_dir) / MANIFEST).exists() else None
