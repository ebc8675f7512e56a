"""The provenance index: writer hook, queries, opt-out registry, attestation, manifest."""

from govlab._lazy import lazy_exports

_EXPORTS = {
    "attest": "govlab.provenance.attest",
    "ProvenanceConfig": "govlab.provenance.config",
    "ProvenanceIndex": "govlab.provenance.index",
    "verify": "govlab.provenance.manifest", "write_manifest": "govlab.provenance.manifest",
    "OptOut": "govlab.provenance.optouts", "OptOutHook": "govlab.provenance.optouts",
    "read_optouts": "govlab.provenance.optouts",
    "ProvenanceWriter": "govlab.provenance.writer",
}
__all__ = ["OptOut", "OptOutHook", "ProvenanceConfig", "ProvenanceIndex", "ProvenanceWriter",
           "attest", "read_optouts", "verify", "write_manifest"]

lazy_exports(__name__, _EXPORTS)
