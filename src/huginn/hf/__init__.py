"""The transformers shell: `RavenConfig` and `RavenForCausalLM` registered with the Auto classes.

After `import huginn`, `AutoModelForCausalLM.from_pretrained(dir)` loads a published Huginn-0125
checkpoint with no remote code. Non-goal: re-implementing the model (it lives in `huginn.model`).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from huginn.hf.cache import HuginnDynamicCache
from huginn.hf.configuration import RavenConfig
from huginn.hf.modeling import CausalLMOutputRecurrentLatents, RavenForCausalLM, RavenPreTrainedModel

# the package's names for the published classes (exported by `huginn` too)
HuginnConfig = RavenConfig
HuginnForCausalLM = RavenForCausalLM

AutoConfig.register("huginn_raven", RavenConfig, exist_ok=True)
AutoModelForCausalLM.register(RavenConfig, RavenForCausalLM, exist_ok=True)

__all__ = [
    "CausalLMOutputRecurrentLatents",
    "HuginnConfig",
    "HuginnDynamicCache",
    "HuginnForCausalLM",
    "RavenConfig",
    "RavenForCausalLM",
    "RavenPreTrainedModel",
]
