"""The recurrent-depth model in plain torch: layers, the prelude/core/coda model, weight init.

Imports only torch (and the typed config). No transformers, no torch.distributed.
"""
