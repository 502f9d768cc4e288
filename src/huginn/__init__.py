"""huginn: depth-recurrent ("looped") language models of the Huginn-0125 family.

Importing the package registers the Huginn-0125 model type (`huginn_raven`) with transformers'
Auto classes, so `AutoModelForCausalLM.from_pretrained(dir)` needs no remote code.
"""

__version__ = "0.1.0"

from huginn.config import SHAPES, ModelConfig, named_shape
from huginn.errors import HuginnError
from huginn.hf import HuginnConfig, HuginnForCausalLM, RavenConfig, RavenForCausalLM
from huginn.model.recurrent import RecurrentLM, RecurrentOutput

__all__ = [
    "SHAPES",
    "HuginnConfig",
    "HuginnError",
    "HuginnForCausalLM",
    "ModelConfig",
    "RavenConfig",
    "RavenForCausalLM",
    "RecurrentLM",
    "RecurrentOutput",
    "__version__",
    "named_shape",
]
