"""Latent-trajectory analysis of recurrent-depth models: what happens to the state across core steps.

- `capture`: run a forward (or a generation) and keep, on CPU, the prelude output, the state after
  every selected core step, optionally the core's per-layer outputs, attention probabilities of
  chosen (step, layer) pairs and the logit lens (the coda read at every step);
- `interventions`: replace, add to (steer) or project out the state at chosen (positions, steps);
- `metrics`: distances between states, KL between steps, steps to convergence, per-token PCA, the
  fixed point / orbit / slider / not converged classification, the loop-counter probe;
- `figures` and `report`: the PNGs, report.html and the JSON of `huginn analyze`.

Everything attaches through the one recurrence's hook (`huginn.model.recurrence.recur`) or
generation's observer; nothing here iterates the core itself. Nothing below this package imports it.
"""

from huginn.analysis.capture import Capture, GenerationCapture, Selection, capture, capture_generation
from huginn.analysis.interventions import Intervention, add, project_out, replace

__all__ = [
    "Capture",
    "GenerationCapture",
    "Intervention",
    "Selection",
    "add",
    "capture",
    "capture_generation",
    "project_out",
    "replace",
]
