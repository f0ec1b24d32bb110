"""The national-services simulator (`drimbox sim`): a DMP as strict as the real one, Pro Santé Connect, the whitelist."""

from drimbox.sim.app import MAX_REQUEST_BYTES, build_sim_app
from drimbox.sim.dmp_kinds import CDA_IMAGING_REPORT, DEFAULT_KINDS, KOS, SUBMISSION_SIGNATURE, DocumentKind
from drimbox.sim.dmp_rules import DMP_REPOSITORY_UNIQUE_ID
from drimbox.sim.dmp_service import DmpOptions
from drimbox.sim.vihf_check import VihfPolicy

__all__ = [
    "CDA_IMAGING_REPORT",
    "DEFAULT_KINDS",
    "DMP_REPOSITORY_UNIQUE_ID",
    "KOS",
    "MAX_REQUEST_BYTES",
    "SUBMISSION_SIGNATURE",
    "DmpOptions",
    "DocumentKind",
    "VihfPolicy",
    "build_sim_app",
]
