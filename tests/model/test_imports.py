"""`huginn.model` is plain torch: importing it (and `huginn` itself) does not import transformers,
while `import huginn` still registers the Auto classes once transformers is imported."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(code: str) -> str:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_importing_the_model_leaves_transformers_unimported():
    out = _run(
        "import sys, huginn, huginn.model, huginn.model.recurrent, huginn.model.recurrence, huginn.model.slots\n"
        "m = huginn.RecurrentLM(huginn.named_shape('tiny'))\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'transformers'))"
    )
    assert out == "[]"


def test_auto_classes_know_huginn_whichever_is_imported_first():
    for first in ("import huginn; import transformers", "import transformers; import huginn"):
        out = _run(
            f"{first}\nfrom transformers import AutoConfig\nprint(type(AutoConfig.for_model('huginn_raven')).__name__)"
        )
        assert out == "RavenConfig", first
