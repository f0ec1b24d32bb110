"""The DocumentEntry of a CDA imaging report (CR d'imagerie médicale) as a RIS publishes it, and telling one apart."""

from __future__ import annotations

import dataclasses

from drimbox.hl7.cda import ReportIdentifiers
from drimbox.hl7.cda_body import has_pdf_body
from drimbox.xds.metadata import Code, KosDocumentEntry, new_uuid
from drimbox.xds.query import DocumentEntryInfo

CDA_MIME_TYPE = "text/xml"
REPORT_CLASS_CODE = Code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")
REPORT_TYPE_CODE = Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale")
# An N1 CDA whose body is a PDF is an XDS-SD document (its templateId 1.3.6.1.4.1.19376.1.2.20 says so); a
# structured one takes the IHE RAD format. [unsure] not checked against the CI-SIS JDV J10 value set.
PDF_FORMAT_CODE = Code(
    "urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "Document à corps non structuré en PDF"
)
STRUCTURED_FORMAT_CODE = Code("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "1.3.6.1.4.1.19376.1.2.3",
                              "CR d'imagerie structuré")  # fmt: skip


def report_entry(base: KosDocumentEntry, cda: bytes, report: ReportIdentifiers) -> KosDocumentEntry:
    """The entry of the CDA itself, from an entry made for its exam (patient, author, setting, references)."""
    return dataclasses.replace(
        base,
        unique_id=report.document_id,
        mime_type=CDA_MIME_TYPE,
        class_code=REPORT_CLASS_CODE,
        type_code=REPORT_TYPE_CODE,
        format_code=PDF_FORMAT_CODE if has_pdf_body(cda) else STRUCTURED_FORMAT_CODE,
        title=report.title or REPORT_TYPE_CODE.display,
        hash=None,
        size=None,
        entry_uuid=new_uuid(),
    )


def is_report(entry: DocumentEntryInfo) -> bool:
    """Whether an ITI-18 answer names an approved CDA imaging report."""
    return entry.approved and entry.type_code is not None and entry.type_code.code == REPORT_TYPE_CODE.code
