"""govlab: training governance for text-to-image diffusion models.

The public API (imported lazily, so ``import govlab`` stays cheap)::

    import govlab
    gov = govlab.Governance(unet, dataset, "out", text_encoder=..., tokenizer=..., scheduler=...)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # a foreign loop's front object and its parts
    "Governance": "govlab.api", "GovernanceConfig": "govlab.api", "ExcludingSampler": "govlab.api",
    "DiffusersDenoiser": "govlab.api", "foreign_routing": "govlab.api",
    # routing
    "Router": "govlab.routing.router", "RoutedAdamW": "govlab.routing.optim", "RoutingConfig": "govlab.routing.config",
    "RoutingPolicy": "govlab.routing.policy", "Band": "govlab.routing.bands", "model_presets": "govlab.routing.bands",
    # provenance index
    "ProvenanceWriter": "govlab.provenance.writer", "ProvenanceIndex": "govlab.provenance.index",
    "ProvenanceConfig": "govlab.provenance.config",
    # memorization monitor
    "MemorizationMonitor": "govlab.memorization.monitor", "MemorizationConfig": "govlab.memorization.config",
    "Denoiser": "govlab.memorization.detectors",
    # govlab's own loop
    "Hook": "govlab.hooks", "StepContext": "govlab.hooks", "EventLog": "govlab.hooks", "Trainer": "govlab.train",
    "RunConfig": "govlab.config", "GovlabError": "govlab.errors",
    # test helpers
    "testing": "govlab.testing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'govlab' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if module.__name__ == f"govlab.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
