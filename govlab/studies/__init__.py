"""Studies: experiments and drivers built on top of the governance primitives and the training loop.

The primitives (``govlab.routing``, ``govlab.memorization``, ``govlab.provenance``, ``govlab.data``,
``govlab.models``) sit below the loop and import nothing from here. Each module here trains, loads or
scores runs with them:

- ``localization``: the routing experiment (localized vs. naive, per-source slots, attenuation);
  ``python -m govlab.studies.localization``.
- ``attenuate``: scale one source's slot in a trained run and report the effect (``govlab attenuate``).
- ``memorization``: one training per memorization intervention, audited against planted duplicates;
  ``python -m govlab.studies.memorization``.
- ``audit``: the extraction audit of a trained run (``govlab audit-memorization``).
- ``lineage``: the lineage study over a zoo of models of known lineage.
"""
