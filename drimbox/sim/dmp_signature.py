"""The DMP's rule that every ITI-41 is signed: one IHE DSG signature covering exactly the submitted documents."""

from __future__ import annotations

from cryptography import x509

from drimbox.sim import vihf_check
from drimbox.sim.dmp_kinds import SUBMISSION_SIGNATURE, DocumentKind
from drimbox.sim.dmp_metadata import DocumentEntryIn, Submission
from drimbox.sim.dmp_rules import ASSOC_SIGNS, XdsError, kind_of, where
from drimbox.xds import namespaces as ns
from drimbox.xds.signature import SignatureError, verify_submission

# [unsure] No public source gives the DMP's own errorCode for a bad signature: the IHE repository metadata
# error, with a codeContext that starts with "submission signature:" so a source can tell it from the rest.
SIGNATURE_ERROR = "XDSRepositoryMetadataError"


def _error(text: str, location: str = "") -> XdsError:
    return XdsError(SIGNATURE_ERROR, f"submission signature: {text}", location)


def _same_dn(cert: x509.Certificate, dn: str) -> bool:
    # Compared as the VIHF check compares its Issuer with its certificate: attribute order and spacing aside.
    return vihf_check._dn(dn) == vihf_check._cert_dn(cert)


def check_signature(
    sub: Submission,
    documents: dict[str, bytes | None],
    kinds: tuple[DocumentKind, ...],
    signer_dn: str | None = None,
) -> list[XdsError]:
    """One signature entry, linked by `signs` to the SubmissionSet, verifying over every other document.

    `signer_dn` is the VIHF issuer: the structure that signs the request must be the one that signs the
    submission. Only enforced when the signature kind is accepted at all (a simulator may be set up without).
    """
    ss = sub.submission_set
    if ss is None or SUBMISSION_SIGNATURE not in kinds:
        return []
    signatures: list[DocumentEntryIn] = [e for e in sub.entries if kind_of(e, kinds) == SUBMISSION_SIGNATURE]
    loc = where(ss, "RegistryPackage")
    if len(signatures) != 1:
        return [_error(f"exactly one signature DocumentEntry (typeCode E1762) is required, found {len(signatures)}",
                       loc)]  # fmt: skip
    sig = signatures[0]
    if not any(a.type == ASSOC_SIGNS and a.source == sig.id and a.target == ss.id for a in sub.associations):
        return [_error("no urn:ihe:iti:2007:AssociationType:signs links the signature to the SubmissionSet", loc)]
    data = documents.get(sig.id)
    if data is None:
        return []  # reported as XDSMissingDocument already
    signed: dict[str, bytes] = {}
    for entry in sub.entries:
        payload, uid = documents.get(entry.id), entry.external_id(ns.DE_UNIQUE_ID)
        if entry is sig:
            continue
        if payload is None or not uid:
            return []  # reported by the document rules already
        signed[uid] = payload
    try:
        verified = verify_submission(data, ss.external_id(ns.SS_UNIQUE_ID) or "", signed)
    except SignatureError as exc:
        return [_error(str(exc), where(sig, "ExtrinsicObject"))]
    if signer_dn is not None and not _same_dn(verified.certificate, signer_dn):
        return [_error("the signing certificate is not the one of the structure that issued the VIHF",
                       where(sig, "ExtrinsicObject"))]  # fmt: skip
    return []
