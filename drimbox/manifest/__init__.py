"""The imaging manifest (DICOM KOS, XDS-I.b / DRIM-M): build it from a C-FIND, serialise it, read it back."""

from drimbox.manifest.kos import (
    CODING_SCHEMES,
    INS_ISSUER,
    KOS_SOP_CLASS,
    TEST_INS_OID,
    Code,
    KosError,
    KosRequest,
    build_kos,
    identity_mismatches,
    kos_to_bytes,
    new_uid,
    procedure_code,
    retrieve_url,
)
from drimbox.manifest.parse import KosInstance, KosSeries, KosSummary, parse_kos

__all__ = [
    "CODING_SCHEMES",
    "INS_ISSUER",
    "KOS_SOP_CLASS",
    "TEST_INS_OID",
    "Code",
    "KosError",
    "KosInstance",
    "KosRequest",
    "KosSeries",
    "KosSummary",
    "build_kos",
    "identity_mismatches",
    "kos_to_bytes",
    "new_uid",
    "parse_kos",
    "procedure_code",
    "retrieve_url",
]
