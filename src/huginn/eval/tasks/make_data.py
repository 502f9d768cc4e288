"""Write the data of the offline parity tasks: `python -m huginn.eval.tasks.make_data [OUT.jsonl]`.

The problems are held-out strings of the built-in parity task (`huginn.train.tasks.Parity`, never
drawn for training where the difficulty has enough strings) at every evaluated difficulty of the
built-in default (1-16 bits as trained, then 20-64: longer than any trained string). One JSON line
per problem: `bits`, `difficulty`, `answer` ("0"/"1"), `label` (its index among the choices).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from huginn.train.tasks import DEFAULT_DIFFICULTY, Parity, eval_difficulties

PER_DIFFICULTY = 8
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "parity.jsonl"


def problems(per_difficulty: int = PER_DIFFICULTY) -> list[dict[str, object]]:
    task = Parity()
    out: list[dict[str, object]] = []
    for k in eval_difficulties(DEFAULT_DIFFICULTY):
        for v in task.instances(k, per_difficulty):
            bits = task.prompt(k, v)[1:-1]  # the prompt is "\n" + bits + "="
            answer = task.answer(k, v)
            out.append({"bits": bits, "difficulty": k, "answer": answer, "label": int(answer)})
    return out


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    out.write_text(render(problems()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
