"""Compliance artifacts in the formats regulators and platforms read.

- ``eu_summary``: the EU AI Office's template for the public summary of training content of
  general-purpose AI models (July 2025; AI Act Art. 53(1)(d)), pre-filled from the run, each field
  traced to the file and key it comes from, the rest marked for a person;
- ``croissant``: MLCommons Croissant 1.1 JSON-LD of the run's training data (record set with the
  governance fields, per-source PROV provenance, Responsible-AI fields);
- ``credentials`` and ``ingest``: C2PA Content Credentials (c2pa-python): the CAWG
  training-and-data-mining assertion honoured at ingestion, and signed manifests on generated images.
"""

from govlab.compliance.credentials import (load_signing_key, run_signing_key, training_permission,
                                           verify_image, write_signed_png)

__all__ = ["load_signing_key", "run_signing_key", "training_permission", "verify_image", "write_signed_png"]
