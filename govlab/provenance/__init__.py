"""The provenance index: writer hook, queries, opt-out registry, attestation, manifest."""

from govlab.provenance.attest import attest
from govlab.provenance.config import ProvenanceConfig
from govlab.provenance.index import ProvenanceIndex
from govlab.provenance.manifest import verify, write_manifest
from govlab.provenance.optouts import OptOut, OptOutHook, read_optouts
from govlab.provenance.writer import ProvenanceWriter

__all__ = ["OptOut", "OptOutHook", "ProvenanceConfig", "ProvenanceIndex", "ProvenanceWriter",
           "attest", "read_optouts", "verify", "write_manifest"]
