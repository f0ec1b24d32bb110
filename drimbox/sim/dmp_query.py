"""ITI-18 Registry Stored Query on the simulated DMP: value syntax, FindDocuments filters, GetDocuments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lxml import etree

from drimbox.sim import dmp_xml
from drimbox.sim.dmp_registration import patient_key
from drimbox.sim.dmp_rules import UNKNOWN_PATIENT, KnownPatients, XdsError
from drimbox.sim.dmp_store import DmpStore, StoredEntry
from drimbox.sim.vihf_check import FAILED_AUTHENTICATION, VihfRefused
from drimbox.xds import namespaces as ns

MISSING_PARAM = "XDSStoredQueryMissingParam"
PARAM_NUMBER = "XDSStoredQueryParamNumber"
UNKNOWN_QUERY = "XDSUnknownStoredQuery"
REGISTRY_ERROR = "XDSRegistryError"
TOO_MANY = "XDSTooManyResults"
MAX_RESULTS = 1000

_DE = "$XDSDocumentEntry"
# Single coded attributes: parameter → entry meta key (values OR'ed).
_CODE_PARAMS = {
    f"{_DE}ClassCode": "classCode",
    f"{_DE}TypeCode": "typeCode",
    f"{_DE}PracticeSettingCode": "practiceSettingCode",
    f"{_DE}HealthcareFacilityTypeCode": "healthcareFacilityTypeCode",
    f"{_DE}FormatCode": "formatCode",
}
# Multi-valued coded attributes: each Value element is an OR group, the groups are AND'ed
# (ITI TF-2a 3.18.4.1.2.3.5).
_AND_OR_PARAMS = {f"{_DE}EventCodeList": "eventCodes", f"{_DE}ConfidentialityCode": "confidentialityCodes"}
_TIME_PARAMS = {
    f"{_DE}{name}{edge}": (key, edge)
    for name, key in (
        ("CreationTime", "creationTime"),
        ("ServiceStartTime", "serviceStartTime"),
        ("ServiceStopTime", "serviceStopTime"),
    )
    for edge in ("From", "To")
}
_SINGLE = {f"{_DE}PatientId", *_TIME_PARAMS, "$homeCommunityId", "$MetadataLevel"}
_FIND = {
    f"{_DE}PatientId",
    f"{_DE}Status",
    f"{_DE}AuthorPerson",
    f"{_DE}Type",
    f"{_DE}ReferenceIdList",
    "$MetadataLevel",
    *_CODE_PARAMS,
    *_AND_OR_PARAMS,
    *_TIME_PARAMS,
}
QUERIES: dict[str, tuple[str, set[str], tuple[str, ...]]] = {
    ns.Q_FIND_DOCUMENTS: ("FindDocuments", _FIND, (f"{_DE}PatientId", f"{_DE}Status")),
    ns.Q_FIND_DOCUMENTS_BY_REFERENCE_ID: (
        "FindDocumentsByReferenceId",
        _FIND,
        (f"{_DE}PatientId", f"{_DE}Status", f"{_DE}ReferenceIdList"),
    ),
    ns.Q_GET_DOCUMENTS: (
        "GetDocuments",
        {f"{_DE}EntryUUID", f"{_DE}UniqueId", "$homeCommunityId", "$MetadataLevel"},
        (),
    ),
    ns.Q_GET_ASSOCIATIONS: ("GetAssociations", {"$uuid", "$homeCommunityId", "$MetadataLevel"}, ("$uuid",)),
}
_TOKEN = re.compile(r"\s*(?:'((?:[^']|'')*)'|([^,'()\s]+))\s*")
_DTM = re.compile(r"^\d{4}(\d{2}){0,5}$")


class StoredQueryError(Exception):
    """An ITI-18 stored query the registry refuses; `error` is the XDS error it answers with."""

    def __init__(self, code: str, context: str) -> None:
        super().__init__(context)
        self.error = XdsError(code, context)


def parse_value(raw: str, name: str) -> list[str]:
    """`'a'`, `('a','b')`, or an unquoted number as in IHE examples (`200412252300`) → its values."""
    text = raw.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    values, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise StoredQueryError(REGISTRY_ERROR, f"{name}: cannot read value {raw!r}")
        values.append(m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise StoredQueryError(REGISTRY_ERROR, f"{name}: values of {raw!r} must be separated by commas")
            pos += 1
    return values


@dataclass
class Params:
    groups: dict[str, list[list[str]]]

    def all(self, name: str) -> list[str]:
        return [v for group in self.groups.get(name, []) for v in group]

    def single(self, name: str) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise StoredQueryError(PARAM_NUMBER, f"{name} takes a single value, got {len(values)}")
        return values[0] if values else None


def read_params(adhoc: etree._Element, allowed: set[str], required: tuple[str, ...]) -> Params:
    groups: dict[str, list[list[str]]] = {}
    for slot in adhoc.findall(f"{{{ns.RIM}}}Slot"):
        name = slot.get("name", "")
        if name not in allowed:
            raise StoredQueryError(REGISTRY_ERROR, f"parameter {name} is not known to this stored query")
        for value in slot.findall(f"{{{ns.RIM}}}ValueList/{{{ns.RIM}}}Value"):
            groups.setdefault(name, []).append(parse_value(value.text or "", name))
    params = Params(groups)
    for name in required:
        if not params.all(name):
            raise StoredQueryError(MISSING_PARAM, f"required parameter {name} is missing")
    for name in _SINGLE & allowed:
        params.single(name)
    return params


def _code(value: str, name: str) -> tuple[str, str]:
    code, sep, scheme = value.partition("^^")
    if not sep or not code or not scheme:
        raise StoredQueryError(REGISTRY_ERROR, f"{name}: coded value {value!r} must be code^^codingScheme")
    return code, scheme


def _has(codes: list[dict[str, str]] | dict[str, str] | None, wanted: set[tuple[str, str]]) -> bool:
    items = codes if isinstance(codes, list) else [codes] if codes else []
    return any((c["code"], c["scheme"]) in wanted for c in items)


def _like(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (% and _) as a regular expression, as the AuthorPerson parameter uses it."""
    return re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern) + r"\Z")


def _time_ok(value: str | None, bound: str, edge: str) -> bool:
    if not value:
        return False
    entry, limit = value.ljust(14, "0"), bound.ljust(14, "0")
    return entry >= limit if edge == "From" else entry < limit


def find_filter(params: Params) -> list[Any]:
    """Predicates on a StoredEntry for every optional FindDocuments parameter present."""
    tests: list[Any] = []
    for name, key in _CODE_PARAMS.items():
        if name in params.groups:
            wanted = {_code(v, name) for v in params.all(name)}
            tests.append(lambda e, k=key, w=wanted: _has(e.meta.get(k), w))
    for name, key in _AND_OR_PARAMS.items():
        for group in params.groups.get(name, []):
            wanted = {_code(v, name) for v in group}
            tests.append(lambda e, k=key, w=wanted: _has(e.meta.get(k), w))
    for name, (key, edge) in _TIME_PARAMS.items():
        bound = params.single(name)
        if bound is not None:
            if not _DTM.match(bound):
                raise StoredQueryError(REGISTRY_ERROR, f"{name}: {bound!r} is not YYYY[MM[DD[hh[mm[ss]]]]]")
            tests.append(lambda e, k=key, b=bound, g=edge: _time_ok(e.meta.get(k), b, g))
    if f"{_DE}AuthorPerson" in params.groups:
        patterns = [_like(p) for p in params.all(f"{_DE}AuthorPerson")]
        tests.append(
            lambda e, ps=patterns: any(
                p.match(person) for a in e.meta.get("authors", []) for person in a.get("authorPerson", []) for p in ps
            )
        )
    if f"{_DE}ReferenceIdList" in params.groups:
        refs = set(params.all(f"{_DE}ReferenceIdList"))
        tests.append(lambda e, r=refs: bool(r & set(e.meta.get("referenceIds", []))))
    if f"{_DE}Type" in params.groups and ns.OBJ_DOCUMENT_ENTRY not in params.all(f"{_DE}Type"):
        tests.append(lambda e: False)  # only stable entries exist here
    return tests


async def _find(params: Params, store: DmpStore, patients: KnownPatients, scope: str | None) -> list[StoredEntry]:
    patient = params.single(f"{_DE}PatientId") or ""
    key = patient_key(patient)
    if not key:
        raise StoredQueryError(REGISTRY_ERROR, f"{_DE}PatientId {patient!r} is not an HL7 CX id^^^&OID&ISO")
    if tuple(key.split("|")) not in patients:
        raise StoredQueryError(UNKNOWN_PATIENT, f"{_DE}PatientId {patient} has no DMP in this registry")
    if scope is not None and key != scope:
        raise VihfRefused(FAILED_AUTHENTICATION, "the VIHF resource-id does not designate the patient of the query")
    statuses = set(params.all(f"{_DE}Status"))
    tests = find_filter(params)
    entries = await store.entries(patient_key=key)
    return [e for e in entries if e.status in statuses and all(t(e) for t in tests)]


async def run_stored_query(
    request: etree._Element, store: DmpStore, patients: KnownPatients, scope: str | None
) -> etree._Element:
    """Answer an AdhocQueryRequest; `scope` is the VIHF patient key (None = no VIHF restriction)."""
    adhoc = request.find(f"{{{ns.RIM}}}AdhocQuery")
    option = request.find(f"{{{ns.QUERY}}}ResponseOption")
    return_type = option.get("returnType", "RegistryObject") if option is not None else "RegistryObject"
    try:
        if adhoc is None or adhoc.get("id") not in QUERIES:
            raise StoredQueryError(
                UNKNOWN_QUERY, f"stored query {adhoc.get('id') if adhoc is not None else None} is not known"
            )
        name, allowed, required = QUERIES[adhoc.get("id", "")]
        if return_type not in ("LeafClass", "ObjectRef"):
            raise StoredQueryError(
                REGISTRY_ERROR, f"returnType {return_type} is not supported: use LeafClass or ObjectRef"
            )
        params = read_params(adhoc, allowed, required)
        if name == "GetAssociations":
            objects = await _associations(params, store, scope)
        else:
            if name == "GetDocuments":
                entries = await _get_documents(params, store, scope)
            else:
                entries = await _find(params, store, patients, scope)
            if return_type == "ObjectRef":
                objects = [dmp_xml.object_ref(e.entry_uuid) for e in entries]
            else:
                objects = [dmp_xml.entry_element(e) for e in entries]
        if len(objects) > MAX_RESULTS:
            raise StoredQueryError(TOO_MANY, f"{len(objects)} results exceed the limit of {MAX_RESULTS}")
    except StoredQueryError as exc:
        return dmp_xml.adhoc_response([exc.error], [])
    return dmp_xml.adhoc_response([], objects)


async def _get_documents(params: Params, store: DmpStore, scope: str | None) -> list[StoredEntry]:
    uuids, uids = params.all(f"{_DE}EntryUUID"), params.all(f"{_DE}UniqueId")
    if bool(uuids) == bool(uids):
        raise StoredQueryError(MISSING_PARAM, f"exactly one of {_DE}EntryUUID and {_DE}UniqueId is required")
    entries = await (store.entries(entry_uuids=uuids) if uuids else store.entries(unique_ids=uids))
    # Documents of another patient than the VIHF's are not disclosed.
    return [e for e in entries if scope is None or e.patient_key == scope]


async def _associations(params: Params, store: DmpStore, scope: str | None) -> list[etree._Element]:
    uuids = params.all("$uuid")
    if scope is not None:
        foreign = {e.entry_uuid for e in await store.entries(entry_uuids=uuids) if e.patient_key != scope}
        uuids = [u for u in uuids if u not in foreign]
    return [dmp_xml.association_element(a) for a in await store.associations(uuids)]
