"""`python -m huginn.eval ARGS`: lm-eval's command line with the model `huginn` registered.

    python -m huginn.eval --model huginn --model_args pretrained=DIR,num_steps=32 --tasks gsm8k

`--include_path` defaults to huginn's offline tasks (`huginn_tasks`, `huginn_gsm8k_cot`) when not
given (`run`, `ls`, `validate`); a path you give replaces it (lm-eval joins several with `:`). A `HuginnError` (a bad model_arg) prints one line and exits with status 2.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from huginn.errors import HuginnError
    from huginn.eval import TASKS_DIR, register

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        register()
        from lm_eval.__main__ import cli_evaluate

        command = args[0] if args and args[0] in ("run", "ls", "validate") else "run" if len(args) > 1 else None
        given = any(a == "--include_path" or a.startswith("--include_path=") for a in args)
        if command is not None and not given:
            args += ["--include_path", str(TASKS_DIR)]
        sys.argv = ["lm-eval", *args]
        cli_evaluate()
    except HuginnError as err:
        print(f"huginn: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
