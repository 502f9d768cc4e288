"""huginn: depth-recurrent ("looped") language models of the Huginn-0125 family.

Importing the package registers the Huginn-0125 model type (`huginn_raven`) with transformers'
Auto classes, so `AutoModelForCausalLM.from_pretrained(dir)` needs no remote code.
"""

__version__ = "0.1.0"

from huginn.config import ModelConfig, named_shape, SHAPES  # noqa: E402
from huginn.errors import HuginnError  # noqa: E402
from huginn.model.recurrent import RecurrentLM, RecurrentOutput  # noqa: E402
from huginn.hf import RavenConfig, RavenForCausalLM, HuginnConfig, HuginnForCausalLM  # noqa: E402

__all__ = [
    "__version__",
    "ModelConfig",
    "named_shape",
    "SHAPES",
    "HuginnError",
    "RecurrentLM",
    "RecurrentOutput",
    "RavenConfig",
    "RavenForCausalLM",
    "HuginnConfig",
    "HuginnForCausalLM",
]
