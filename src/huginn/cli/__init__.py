"""The `huginn` command: one click group whose subcommands load lazily from sibling modules.

Each subcommand module is a thin layer over the package (argument parsing, progress, printing);
the work itself lives in `huginn.model`, `huginn.infer`, `huginn.train`, `huginn.data`, ....
Subcommands are imported only when invoked, so `huginn --help` stays fast.
A `HuginnError` (a user mistake) is printed as one line, without a traceback, with exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

# name -> "module:attribute" of a click command or group
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("huginn.cli.info:info", "Shape, parameters by part and FLOPs per token of a checkpoint or named shape."),
    "demo": ("huginn.cli.demo:demo", "Outputs and cost of a tiny built-in model at several depths (no download)."),
    "train": ("huginn.cli.train:train", "Pretrain or fine-tune from a YAML config (built-in default without one)."),
    "export": ("huginn.cli.train:export", "Write a training run as a published-format Huginn checkpoint."),
    "generate": (
        "huginn.cli.generate:generate",
        "Generate text from a checkpoint (adaptive exits, cache sharing, streaming).",
    ),
    "chat": ("huginn.cli.generate:chat", "Chat with a checkpoint through its chat template."),
    "data": ("huginn.cli.data:data", "Data pipeline: train-tokenizer, tokenize, mix, shuffle, stats."),
    "retrofit": ("huginn.cli.retrofit:retrofit", "Convert a pretrained transformer into a recurrent-depth model."),
    "eval": (
        "huginn.cli.eval:eval_command",
        "Evaluate across depth: lm-eval tasks or loss on local text at each num_steps.",
    ),
    "analyze": (
        "huginn.cli.analyze:analyze",
        "Latent trajectories of a text: convergence, orbits, logit lens, report.html.",
    ),
    "serve": ("huginn.cli.serve:serve", "Serve a checkpoint through vLLM's OpenAI-compatible server."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; missing modules are simply not listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in SUBCOMMANDS if self._available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS or not self._available(name):
            return None
        module_name, attr = SUBCOMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @staticmethod
    def _available(name: str) -> bool:
        module_name = SUBCOMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module_name) is not None


def _version() -> str:
    from huginn import __version__

    return __version__


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="huginn")
def cli() -> None:
    """huginn: depth-recurrent (looped) language models of the Huginn-0125 family."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group, turning user mistakes into one-line errors."""
    from huginn.errors import HuginnError

    try:
        if "HUGINN_GEMM" in os.environ:  # a bad value fails here, before any command writes anything
            from huginn.model.products import gemm_mode

            gemm_mode()
        cli.main(args=argv, prog_name="huginn", standalone_mode=False)
    except HuginnError as err:
        click.echo(f"huginn: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("huginn: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.format_message())  # bare `huginn`: the help, not an error
    except click.ClickException as err:
        # usage mistakes: one line, the fix is in `--help`
        click.echo(f"huginn: error: {err.format_message()} (see `huginn {_sub(argv)}--help`)", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("huginn: interrupted", err=True)
        sys.exit(130)
    except FileNotFoundError as err:
        click.echo(f"huginn: error: no such file or directory: {err.filename or err}", err=True)
        sys.exit(2)


def _sub(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return f"{args[0]} " if args and args[0] in SUBCOMMANDS else ""
