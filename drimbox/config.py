"""One typed settings object, read from a TOML file and DRIMBOX_<SECTION>__<KEY> variables, checked at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


@dataclass
class BoxSettings:
    roles: list[str] = field(default_factory=lambda: ["source"])
    profile: str = "proxy"
    public_url: str = "http://127.0.0.1:8080"
    var_dir: str = "var"
    # Retrieve Location UID written in the KOS (= this box's repositoryUniqueId for XDS-I).
    repository_uid: str = "1.2.250.1.999.1.1.1"
    # OID under which the box mints new UIDs (KOS SOP Instance, series).
    uid_root: str = "1.2.250.1.999.1.1.2."
    log_level: str = "INFO"
    # "text" (one readable line a record) or "json" (one JSON object a line: time, level, logger, message).
    log_format: str = "text"


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Origins allowed to call the DICOMweb API from a page elsewhere ("*" = any); empty = same-origin only.
    cors_origins: list[str] = field(default_factory=list)
    # Compress (lossless) on the fly when a client prefers a compressed syntax the images are not stored in:
    # "auto" only when it weights it above uncompressed (the viewer does so on a link below ~160 Mbit/s, where a
    # third of the bytes is worth ~6 ms of box CPU a 512² slice; on a LAN it spends none), true whenever it lists
    # it first, false never.
    compress_on_the_fly: bool | str = "auto"
    # Serving processes on the HTTP port (`drimbox serve`): 0 = one per CPU the box may use, 1 = a single process.
    # One of them (the primary) also runs the MLLP and DICOM listeners and the publication worker.
    workers: int = 0

    def worker_count(self) -> int:
        """The processes `drimbox serve` starts: `workers`, or when 0 the CPUs this process may use (its CPU
        affinity, and a container's CPU quota: cgroup v2 cpu.max)."""
        if self.workers > 0:
            return self.workers
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 1
        try:
            quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
            if quota != "max":
                cpus = min(cpus, -(-int(quota) // int(period)))  # 1.5 CPUs: 2 processes
        except (OSError, ValueError):
            pass
        return max(1, cpus)


@dataclass
class MllpSettings:
    host: str = "127.0.0.1"
    port: int = 2575
    # A frame larger than this is refused (AR) and the connection closed: bounded memory per client.
    max_message_bytes: int = 32 * 1024 * 1024
    # A client that sends nothing for this long is disconnected.
    idle_timeout: float = 300.0
    # MLLP over TLS with the [tls] server certificate and client_auth (the RIS must speak TLS too).
    tls: bool = False


@dataclass
class DicomSettings:
    ae_title: str = "DRIMBOX"
    host: str = "127.0.0.1"
    port: int = 11112
    # Native profile: who may C-STORE into the archive, each "AE_TITLE@host". The calling AE title AND the address
    # it calls from must both match (AE titles are not secrets); a host name is resolved once at start. Empty:
    # nobody; an operator adds each modality or PACS that feeds the archive. Anyone else is refused at association.
    store_peers: list[str] = field(default_factory=list)
    # Who may send IOCM rejection notes (they replace or withdraw published KOS, and in Native delete instances),
    # same "AE_TITLE@host" form. Empty: the [pacs] peer ([pacs] ae_title@host) in Proxy profile, nobody in Native.
    iocm_senders: list[str] = field(default_factory=list)


@dataclass
class PacsSettings:
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    retrieve: str = "c-get"
    # Per-operation DIMSE time-out, distinct from HTTP time-outs.
    timeout: float = 30.0


@dataclass
class DmpSettings:
    url: str = "http://127.0.0.1:8090/dmp"
    timeout: float = 30.0
    # Structure (healthcare organisation) that signs the VIHF; defaults are the ANS test centre.
    structure_id: str = "101235555"
    structure_name: str = "Centre de radiologie Ambroise"
    secteur_activite: str = "SA25^1.2.250.1.71.4.2.4"
    healthcare_facility_type: str = "SA25"
    practice_setting: str = "AMBULATOIRE"
    content_type_code: str = "04"
    lps_id: str = "drimbox"
    lps_name: str = "drimbox"
    lps_version: str = "0.1.0"
    lps_homologation: str = "DRIMBOX-TEST"
    vihf_version: str = "3.0"
    # PEM key and certificate that sign the VIHF; empty = generate a self-signed test pair in var_dir.
    signing_key: str = ""
    signing_cert: str = ""
    source_id: str = "1.2.250.1.999.1.1.3"
    # What a withdrawal (T04 / ORC-1 CA) does to the published KOS: "deleted" is the DMP's own status
    # (urn:asip:ci-sis:2010:StatusType:Deleted); "deprecated" is the plain XDS way.
    withdraw_status: str = "deleted"


@dataclass
class PublishSettings:
    # How long a report waits for its images to appear in the PACS before it is marked failed.
    waiting_window: float = 6 * 3600.0
    waiting_interval: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    workers: int = 2
    # A job an instance claimed is its own this long, renewed while it runs; an instance that died (its lease ran
    # out) has its job taken over by another instance sharing the [state] database.
    lease_seconds: float = 60.0


@dataclass
class CacheSettings:
    # Proxy profile: retrieved series kept on disk under var_dir/cache, least recently used evicted first.
    max_bytes: int = 10 * 1024**3
    # How long a study's series list, once asked of the PACS, is trusted: a warm request then needs no
    # C-FIND. Published studies do not grow; a replaced or withdrawn publication clears it at once.
    study_ttl: float = 300.0


@dataclass
class PscSettings:
    issuer: str = "http://127.0.0.1:8090/psc"
    client_id: str = "drimbox"
    client_secret: str = "drimbox-secret"


@dataclass
class WhitelistSettings:
    url: str = "http://127.0.0.1:8090/whitelist"
    # PEM file of the root certificate(s) the signer's chain must end at: the IGC-Santé root (for the ANS TEST
    # list, "TEST AC RACINE IGC-SANTE ELEMENTAIRE"). Empty: no signed list is trusted (unless trust_on_first_use).
    trust_roots: str = ""
    # PEM file of intermediate CAs (IGC-Santé "AC ... ORGANISATIONS"); the list's KeyInfo may also carry them.
    intermediates: str = ""
    # The signer's subject, as the ANS names it (informatif/listeblanche/Readme.md): CN exactly, OU among its OUs.
    signer_cn: str = "Liste Blanche DRIM-M"
    signer_ou: str = "318751275100020"
    # Revocation of the signer (and intermediates): CRL file (PEM, one or more, or one DER); empty = each
    # certificate's HTTP CRL distribution point is fetched at every refresh. No current CRL = list refused.
    crl: str = ""
    check_revocation: bool = True
    # Explicit opt-in, for the simulator on loopback only: trust the root served at certificate_url the first
    # time it is fetched (trust on first use). Never for the national list: set trust_roots.
    trust_on_first_use: bool = False
    certificate_url: str = "http://127.0.0.1:8090/whitelist/certificate"
    # false: an unsigned list is accepted with a warning (a signed one is still verified).
    require_signature: bool = True
    # With mutual TLS on a source box: a calling box's client certificate subject must be the DNCertificatOperateur
    # of an entry of the list (else 403).
    check_client_dn: bool = True
    refresh_interval: float = 3600.0
    # A refresh that fails keeps the last verified list this long, then every host is refused.
    max_stale: float = 24 * 3600.0
    timeout: float = 10.0


@dataclass
class AuthSettings:
    # Browser sessions, kept server-side in var_dir/auth.sqlite: absolute lifetime and idle time-out.
    session_ttl: float = 8 * 3600.0
    session_idle: float = 30 * 60.0
    cookie_name: str = "drimbox_session"
    # Pro Santé Connect wants scope "openid scope_all" and acr_values "eidas1"; other providers ignore them.
    scopes: list[str] = field(default_factory=lambda: ["openid", "scope_all"])
    acr_values: str = "eidas1"
    # Extra "key=value" parameters for every authorization request (the simulator's "sim_auto=1").
    authorize_params: list[str] = field(default_factory=list)
    # How the box authenticates to the token, introspection and revocation endpoints.
    token_endpoint_auth: str = "client_secret_basic"
    # An access token this close to its expiry is refreshed before it is handed out.
    refresh_margin: float = 60.0
    clock_leeway: int = 60
    discovery_ttl: float = 3600.0
    http_timeout: float = 10.0
    # Bearer tokens from other boxes (source side): "introspection" sees revocation, "jwt" needs no call.
    token_check: str = "introspection"
    token_cache_ttl: float = 30.0
    # When set, a bearer token's "aud" must contain this value.
    token_audience: str = ""
    # Local page the browser lands on after logout.
    logout_redirect: str = "/auth/logged-out"
    # Source side: /dicom-web answers the operator token; a PSC bearer token with a KOS-SOPInstanceUID naming a KOS
    # this source published and has not withdrawn; or a box session for the study of a report link it opened. Both
    # only see what the live KOS references (source/access.py, dicomweb/scope.py). false: open to anyone who connects.
    protect_dicomweb: bool = True
    # The operator's API (GET /api/publications, DELETE /api/cache, POST /api/report-links) and STOW-RS take
    # `Authorization: Bearer <operator token>`. Only its hash is kept here: "sha256:<64 hex digits>" of the token
    # (`printf %s TOKEN | sha256sum`). Empty: no operator token (then nobody reads publications or unpublished studies).
    operator_token: str = ""
    # The operator page (/operator): a login with the operator token opens a session of its own, ended after this
    # long without a request (and after 2 h in any case).
    operator_idle: float = 15 * 60.0
    # HMAC-SHA256 keys (at least 32 characters each) that sign report links (/IHEInvokeImageDisplay): the first
    # signs, every one verifies (key rotation: put the new key first, drop the old one after report_link_ttl).
    # Empty: unsigned links are accepted, as before. Set: an unsigned, tampered or expired link is refused (403).
    report_link_keys: list[str] = field(default_factory=list)
    # How long a signed link opens the viewer. Reports are read weeks or months after the exam (the follow-up
    # consultation, a second opinion); the link still needs a Pro Santé Connect login, so the signature guards the
    # link's integrity and bounds how long a leaked copy stays useful. 90 days; later the DMP (consumer box) has it.
    report_link_ttl: float = 90 * 24 * 3600.0


@dataclass
class ConsumerSettings:
    # TD0.2/TD0.3 (does the DMP exist, is access authorised; declare it) before each DMP lookup, in the DMP's
    # format (HL7 v3 PRPA_IN201307UV02 at {dmp}/patients, setAuthorization at {dmp}/habilitations; see
    # drimbox/xds/access.py). false: skip them, and the DMP's own answers to ITI-18 decide alone.
    access_check: bool = True
    # INS assigning authority when a URL names none (test INS; production INS-NIR is 1.2.250.1.213.1.4.8).
    ins_oid: str = "1.2.250.1.213.1.4.10"
    # How long (seconds) a contextual launch waits, server-side, for the professional to log in.
    launch_ttl: float = 3600.0
    # Requests by one professional for one patient within this many seconds are one consultation; the
    # exams "new since last time" are those first seen after the previous consultation began.
    visit_window: float = 1800.0
    # KOS manifests fetched from the DMP (ITI-43) at the same time for one exam list.
    kos_concurrency: int = 4
    # Images fetched from source boxes, kept under var_dir/consumer-cache (least recently used evicted first).
    cache_max_bytes: int = 10 * 1024**3
    # Fetch every exam of a listed patient into the cache before it is opened (costs the sources' bandwidth).
    prefetch: bool = False
    # Retrieves from source boxes: connect time-out, and the longest silence while a series streams.
    retrieve_connect_timeout: float = 10.0
    retrieve_read_timeout: float = 60.0
    # The local PACS exams are imported into: "c-store" (DIMSE, the default) or "stow-rs" (to local_pacs_stow_url).
    local_pacs_method: str = "c-store"
    local_pacs_ae_title: str = "ORTHANC"
    local_pacs_host: str = "127.0.0.1"
    local_pacs_port: int = 4242
    # STOW-RS base, e.g. http://pacs:8042/dicom-web (instances already there are found by QIDO-RS on it).
    local_pacs_stow_url: str = ""
    local_pacs_timeout: float = 30.0
    # More local PACS an import may go to, each "AE_TITLE@host:port" (C-STORE): with any, the exam list offers a
    # choice of destination, the local_pacs_* one first (the default).
    local_pacs_others: list[str] = field(default_factory=list)


@dataclass
class AccessSettings:
    """The consumer's DMP access rules (drimbox/consumer/access.py), checked before any DMP call."""

    # Who may consult imaging: TRE_G15 profession codes, or profession/specialty ("21/SM98"). Empty = the
    # DMP's matrix as drimbox reads it (drimbox/xds/habilitation.py: médecin, chirurgien-dentiste, sage-femme,
    # infirmier). Non-medical staff (no RPPS profession) are never allowed, whatever this says.
    imaging_professions: list[str] = field(default_factory=list)
    # Offer emergency access ("bris de glace") to a refused professional; the patient may still have blocked it.
    emergency: bool = True
    # How long (seconds) an emergency access, once granted, covers that professional and patient.
    emergency_ttl: float = 4 * 3600.0
    # The reason the professional gives for an emergency access: at least this many characters.
    emergency_reason_min: int = 8


@dataclass
class MetricsSettings:
    # GET /metrics (Prometheus text format) answers the operator token and, without it, clients whose address is in
    # one of these networks ("10.0.0.0/8", "127.0.0.1/32"); empty (the default) = the operator token only.
    networks: list[str] = field(default_factory=list)


@dataclass
class AuditSettings:
    # The hash-chained trail of every access to patient data (drimbox/audit/trail.py); false = kept in memory only.
    enabled: bool = True
    # SQLite file of the trail; empty = var_dir/audit.sqlite.
    path: str = ""
    # Best-effort copy to a syslog collector: "udp://host:port" or "tcp://host:port"; empty = off.
    syslog: str = ""
    # "atna": an IHE ATNA / DICOM PS3.15 Audit Message (XML) per event; "json": the stored record.
    syslog_format: str = "atna"
    # Every this many records (and at start and clean stop) the head is signed with the structure key into
    # audit-checkpoints.jsonl beside the trail, so a cut tail is seen by `drimbox audit verify`; 0 = off.
    checkpoint_every: int = 100


@dataclass
class StateSettings:
    # Where the stores live (outbox, sessions, consumer state, audit trail): "" = SQLite files under var_dir (the
    # embedded default); "postgresql://user@host:port/db" (or "postgresql://user@/db?host=/socket/dir") = one
    # PostgreSQL database shared by several instances, a schema per store.
    url: str = ""
    # The directory every instance of a group mounts: the Native archive and the Proxy's series cache live under it
    # (archive/, cache/). "" = var_dir (one instance). KOS bytes are in the stores, so they need no shared file.
    shared_dir: str = ""


@dataclass
class SimSettings:
    host: str = "127.0.0.1"
    port: int = 8090
    var_dir: str = "var/sim"
    # INS (with their OID) known to the simulated DMP, as "INS^^^&OID&ISO^NH" or plain INS (test OID).
    patients: list[str] = field(default_factory=lambda: ["279035121518989"])
    # PEM certificates (paths) whose holders, or whose direct issuees, may sign VIHF assertions.
    # Empty = test mode: any certificate embedded in the signature is accepted if the signature verifies.
    trusted_certs: list[str] = field(default_factory=list)
    # Base URL the simulator is reached at (its PSC issuer is {public_url}/psc); empty = http://{host}:{port}.
    public_url: str = ""
    # Redirect URIs registered for the [psc] client, matched exactly. Empty = any http loopback URI
    # (127.0.0.1, localhost, [::1]; any port and path), since tests and the demo pick their ports at run time.
    psc_redirect_uris: list[str] = field(default_factory=list)
    # Lifetime in seconds of the access tokens the simulated Pro Santé Connect issues.
    psc_access_token_lifetime: int = 300
    # JSON file of extra test professionals (one with a built-in's id replaces it); empty = built-ins only.
    professionals_file: str = ""
    # What the simulated ANS whitelist lists, each as a DRIMbox (<db>) and a viewer (<vi>) entry: "host" (port 443
    # only, as the ANS list), "host:port", "http(s)://host:port/prefix", or "host:*" (every port of a loopback host:
    # the default, for tests whose boxes pick their ports at run time; the demo lists its boxes' exact URLs).
    whitelist_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1:*", "localhost:*"])
    # The DNCertificatOperateur of each whitelist_hosts entry, in order (RFC 4514, as the ANS writes them): the
    # subject of that box's client certificate. Entries beyond this list get "CN=<host>,OU=drimbox-sim,O=drimbox,C=FR".
    whitelist_operator_dns: list[str] = field(default_factory=list)
    # Who signs the list (tests of the boxes' checks): "valid" (the test root's chain), "untrusted" (another
    # root), "revoked" (listed in the CRL), "wrong_cn", "wrong_ou", "expired".
    whitelist_signer: str = "valid"


@dataclass
class TlsSettings:
    # PEM certificate (chain) and key of the box's own HTTP server: both set → HTTPS; empty → plain HTTP.
    cert: str = ""
    key: str = ""
    # Mutual TLS on the server: "none"; "optional" (a certificate is asked for, checked against client_ca if
    # sent, and box-to-box calls must present one); "required" (no certificate, no handshake).
    client_auth: str = "none"
    client_ca: str = ""
    # Trust bundle (PEM) for outbound HTTPS (DMP, Pro Santé Connect, whitelist, other boxes); empty = system store.
    ca: str = ""
    # Certificate and key this box presents to the DMP and to other boxes (the structure's authentication one).
    client_cert: str = ""
    client_key: str = ""
    # Lowest protocol version accepted and offered: "TLSv1.2" or "TLSv1.3".
    min_version: str = "TLSv1.2"


@dataclass
class PatientSettings:
    """Patients opening their own exams from Mon Espace Santé (/patient/...): off unless enabled."""

    enabled: bool = False
    # The patient-facing OpenID provider (Mon Espace Santé's authentication; the simulator's is {sim}/mes).
    issuer: str = "http://127.0.0.1:8090/mes"
    client_id: str = "drimbox-patient"
    client_secret: str = "drimbox-patient-secret"
    scopes: list[str] = field(default_factory=lambda: ["openid", "profile", "ins"])
    # eIDAS level "substantial" (ApCV, the carte Vitale app): the value asked for and required in the ID token.
    acr_values: str = "eidas2"
    session_ttl: float = 3600.0
    session_idle: float = 15 * 60.0
    # Exams of these modalities are never shown to patients (e.g. ["PT", "NM"] until a doctor has explained them).
    withhold_modalities: list[str] = field(default_factory=list)
    # Ask the DMP, at each opening, whether the KOS is still visible to the patient (INVISIBLE_PATIENT).
    check_dmp_visibility: bool = True


@dataclass
class Settings:
    box: BoxSettings = field(default_factory=BoxSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    mllp: MllpSettings = field(default_factory=MllpSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    dmp: DmpSettings = field(default_factory=DmpSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    psc: PscSettings = field(default_factory=PscSettings)
    whitelist: WhitelistSettings = field(default_factory=WhitelistSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    state: StateSettings = field(default_factory=StateSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sim: SimSettings = field(default_factory=SimSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    patient: PatientSettings = field(default_factory=PatientSettings)

    @property
    def var_path(self) -> Path:
        return Path(self.box.var_dir)

    @property
    def shared_path(self) -> Path:
        """Where the Native archive and the series cache live: [state] shared_dir, else var_dir."""
        return Path(self.state.shared_dir) if self.state.shared_dir else self.var_path

    @property
    def sim_var_path(self) -> Path:
        return Path(self.sim.var_dir)


_ENV_PREFIX = "DRIMBOX_"


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Convert a TOML or environment value to the declared type, or raise naming the key."""
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return list(value)
    if kind == bool | str:  # true, false or a word (compress_on_the_fly = "auto"): checked by _validate
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, bool | str):
            return value
        raise ConfigError(f"{key}: expected true, false or a word, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type")


def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def parse_pacs(entry: str, timeout: float = 30.0) -> PacsSettings | None:
    """A PACS written AE_TITLE@host:port (consumer.local_pacs_others), or None when it is not that."""
    ae, sep, address = entry.strip().rpartition("@")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not 0 < len(ae) <= 16 or "\\" in ae or not host.strip("[]") or not port.isdigit():
        return None
    if not 0 < int(port) <= 65535:
        return None
    return PacsSettings(ae_title=ae, host=host.strip("[]"), port=int(port), timeout=timeout)


def _validate(s: Settings) -> None:
    if not s.box.roles or any(r not in ("source", "consumer") for r in s.box.roles):
        raise ConfigError(f"box.roles: each role must be 'source' or 'consumer', got {s.box.roles!r}")
    if s.http.compress_on_the_fly not in (True, False, "auto"):
        raise ConfigError(f'http.compress_on_the_fly: true, false or "auto", got {s.http.compress_on_the_fly!r}')
    if s.http.workers < 0:
        raise ConfigError(f"http.workers: 0 (one per CPU) or a number of processes, got {s.http.workers}")
    if s.box.log_format not in ("text", "json"):
        raise ConfigError(f"box.log_format: must be 'text' or 'json', got {s.box.log_format!r}")
    for network in s.metrics.networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"metrics.networks: not an IP network: {network!r}") from None
    if s.state.url and not s.state.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"state.url: empty (SQLite under var_dir) or a postgresql:// URL, got {s.state.url.split('@')[-1]!r}"
        )
    if s.publish.lease_seconds <= 0:
        raise ConfigError(f"publish.lease_seconds: must be positive, got {s.publish.lease_seconds}")
    if s.box.profile not in ("proxy", "native"):
        raise ConfigError(f"box.profile: must be 'proxy' or 'native', got {s.box.profile!r}")
    if not s.box.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"box.public_url: must be an http(s) URL, got {s.box.public_url!r}")
    if s.pacs.retrieve not in ("c-get", "c-move"):
        raise ConfigError(f"pacs.retrieve: must be 'c-get' or 'c-move', got {s.pacs.retrieve!r}")
    for name in ("http", "mllp", "dicom", "pacs", "sim"):
        port = getattr(s, name).port
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name}.port: must be between 0 and 65535, got {port}")
    for key, ae in (("dicom.ae_title", s.dicom.ae_title), ("pacs.ae_title", s.pacs.ae_title)):
        if not 0 < len(ae) <= 16 or "\\" in ae:
            raise ConfigError(f"{key}: a DICOM AE title is 1 to 16 characters without backslash, got {ae!r}")
    for key, entries in (("dicom.store_peers", s.dicom.store_peers), ("dicom.iocm_senders", s.dicom.iocm_senders)):
        for entry in entries:
            ae, sep, host = entry.strip().rpartition("@")
            if not sep or not 0 < len(ae.strip()) <= 16 or "\\" in ae or not host.strip().strip("[]"):
                raise ConfigError(f"{key}: each entry is AE_TITLE@host (AE title 1 to 16 characters), got {entry!r}")
    for key, url in (("dmp.url", s.dmp.url), ("psc.issuer", s.psc.issuer), ("whitelist.url", s.whitelist.url)):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}: must be an http(s) URL, got {url!r}")
    if not s.box.uid_root.replace(".", "").isdigit() or len(s.box.uid_root) > 40:
        raise ConfigError(
            f"box.uid_root: must be a numeric OID prefix of at most 40 characters, got {s.box.uid_root!r}"
        )
    if s.dmp.withdraw_status not in ("deleted", "deprecated"):
        raise ConfigError(f"dmp.withdraw_status: must be 'deleted' or 'deprecated', got {s.dmp.withdraw_status!r}")
    if s.publish.backoff_initial <= 0 or s.publish.backoff_max < s.publish.backoff_initial:
        raise ConfigError("publish.backoff_initial: must be > 0 and <= publish.backoff_max")
    if s.cache.max_bytes < 0:
        raise ConfigError(f"cache.max_bytes: must be >= 0, got {s.cache.max_bytes}")
    if s.publish.workers < 1:
        raise ConfigError(f"publish.workers: must be at least 1, got {s.publish.workers}")
    _validate_consumer(s)
    _validate_access(s)
    _validate_auth(s)
    if s.audit.syslog and not re.match(r"^(udp|tcp)://[^/:]+:\d{1,5}$", s.audit.syslog):
        raise ConfigError(f"audit.syslog: must be udp://host:port or tcp://host:port, got {s.audit.syslog!r}")
    if s.audit.syslog_format not in ("atna", "json"):
        raise ConfigError(f"audit.syslog_format: must be 'atna' or 'json', got {s.audit.syslog_format!r}")
    if s.audit.checkpoint_every < 0:
        raise ConfigError(f"audit.checkpoint_every: must be 0 (off) or more, got {s.audit.checkpoint_every}")
    _validate_sim(s)
    _validate_tls(s)
    _validate_patient(s)


def _validate_patient(s: Settings) -> None:
    p = s.patient
    if not p.issuer.startswith(("http://", "https://")):
        raise ConfigError(f"patient.issuer: must be an http(s) URL, got {p.issuer!r}")
    if "openid" not in p.scopes:
        raise ConfigError(f"patient.scopes: must include 'openid', got {p.scopes!r}")
    if p.session_ttl <= 0 or p.session_idle <= 0:
        raise ConfigError("patient.session_ttl and patient.session_idle: must be > 0")


def _validate_tls(s: Settings) -> None:
    """Shapes and pairs only; readability and key/certificate match are checked by drimbox.tls at start."""
    t = s.tls
    if t.client_auth not in ("none", "optional", "required"):
        raise ConfigError(f"tls.client_auth: must be 'none', 'optional' or 'required', got {t.client_auth!r}")
    if t.min_version not in ("TLSv1.2", "TLSv1.3"):
        raise ConfigError(f"tls.min_version: must be 'TLSv1.2' or 'TLSv1.3', got {t.min_version!r}")
    for a, b in (("cert", "key"), ("client_cert", "client_key")):
        if bool(getattr(t, a)) != bool(getattr(t, b)):
            raise ConfigError(f"tls.{b if getattr(t, a) else a}: required with tls.{a if getattr(t, a) else b}")
    if t.client_auth != "none" and not t.cert:
        raise ConfigError("tls.cert: required when tls.client_auth is not 'none' (mutual TLS needs HTTPS)")
    if t.client_auth != "none" and not t.client_ca:
        raise ConfigError("tls.client_ca: required when tls.client_auth is not 'none'")
    if s.mllp.tls and not t.cert:
        raise ConfigError("tls.cert: required when mllp.tls is true")


def _validate_auth(s: Settings) -> None:
    a, w = s.auth, s.whitelist
    for key, value in (
        ("auth.session_ttl", a.session_ttl),
        ("auth.session_idle", a.session_idle),
        ("auth.operator_idle", a.operator_idle),
        ("auth.discovery_ttl", a.discovery_ttl),
        ("auth.http_timeout", a.http_timeout),
        ("whitelist.refresh_interval", w.refresh_interval),
        ("whitelist.timeout", w.timeout),
    ):
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    for key, value in (
        ("auth.refresh_margin", a.refresh_margin),
        ("auth.clock_leeway", a.clock_leeway),
        ("auth.token_cache_ttl", a.token_cache_ttl),
        ("whitelist.max_stale", w.max_stale),
    ):
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    if a.token_check not in ("introspection", "jwt"):
        raise ConfigError(f"auth.token_check: must be 'introspection' or 'jwt', got {a.token_check!r}")
    if a.token_endpoint_auth not in ("client_secret_basic", "client_secret_post"):
        raise ConfigError(
            f"auth.token_endpoint_auth: must be 'client_secret_basic' or 'client_secret_post', got {a.token_endpoint_auth!r}"
        )
    if "openid" not in a.scopes:
        raise ConfigError(f"auth.scopes: must include 'openid', got {a.scopes!r}")
    if not a.cookie_name or not all(c.isalnum() or c in "_-" for c in a.cookie_name):
        raise ConfigError(f"auth.cookie_name: letters, digits, '_' and '-' only, got {a.cookie_name!r}")
    for param in a.authorize_params:
        if "=" not in param or not param.partition("=")[0]:
            raise ConfigError(f"auth.authorize_params: each entry is 'key=value', got {param!r}")
    if not a.logout_redirect.startswith("/") or a.logout_redirect.startswith("//"):
        raise ConfigError(f"auth.logout_redirect: must be a local path, got {a.logout_redirect!r}")
    if a.operator_token and not re.fullmatch(r"sha256:[0-9a-f]{64}", a.operator_token):
        raise ConfigError(
            "auth.operator_token: must be 'sha256:' and the 64 lowercase hex digits of the token's SHA-256"
        )
    for key in a.report_link_keys:
        if len(key) < 32:
            raise ConfigError("auth.report_link_keys: each key needs at least 32 characters")
    if a.report_link_ttl <= 0:
        raise ConfigError(f"auth.report_link_ttl: must be > 0, got {a.report_link_ttl}")
    if w.certificate_url and not w.certificate_url.startswith(("http://", "https://")):
        raise ConfigError(f"whitelist.certificate_url: must be an http(s) URL, got {w.certificate_url!r}")
    for key, path in (
        ("whitelist.trust_roots", w.trust_roots),
        ("whitelist.intermediates", w.intermediates),
        ("whitelist.crl", w.crl),
    ):
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}: file not found: {path!r}")
    if w.trust_on_first_use and not w.certificate_url:
        raise ConfigError("whitelist.certificate_url: required when whitelist.trust_on_first_use is true")
    if not w.signer_cn.strip() or not w.signer_ou.strip():
        raise ConfigError("whitelist.signer_cn, whitelist.signer_ou: must not be empty")


# A host name or an IPv4 literal, as the ANS whitelist writes them in <db> and <vi> (no scheme, no port).
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _validate_sim(s: Settings) -> None:
    sim = s.sim
    if sim.public_url:
        parts = urlsplit(sim.public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                f"sim.public_url: must be an http(s) URL without query or fragment, got {sim.public_url!r}"
            )
    for uri in sim.psc_redirect_uris:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise ConfigError(
                f"sim.psc_redirect_uris: each must be an absolute http(s) URL without fragment, got {uri!r}"
            )
    if sim.psc_access_token_lifetime < 1:
        raise ConfigError(
            f"sim.psc_access_token_lifetime: must be at least 1 second, got {sim.psc_access_token_lifetime}"
        )
    if sim.professionals_file and not Path(sim.professionals_file).is_file():
        raise ConfigError(f"sim.professionals_file: file not found: {sim.professionals_file!r}")
    if not sim.whitelist_hosts:
        raise ConfigError("sim.whitelist_hosts: must list at least one host")
    if sim.whitelist_signer not in ("valid", "untrusted", "revoked", "wrong_cn", "wrong_ou", "expired"):
        raise ConfigError(
            f"sim.whitelist_signer: one of valid, untrusted, revoked, wrong_cn, wrong_ou, expired; "
            f"got {sim.whitelist_signer!r}"
        )
    for dn in sim.whitelist_operator_dns:
        try:
            x509.Name.from_rfc4514_string(dn)
        except ValueError:
            raise ConfigError(f"sim.whitelist_operator_dns: not an RFC 4514 DN: {dn!r}") from None
    for host in sim.whitelist_hosts:
        if not _whitelist_entry(host):
            raise ConfigError(
                f"sim.whitelist_hosts: each must be host, host:port, loopback host:* or an http(s) URL "
                f"without query, got {host!r}"
            )


def _whitelist_entry(entry: str) -> bool:
    if "://" not in entry:
        host, sep, port = entry.partition(":")
        loopback = host in ("127.0.0.1", "localhost")
        return bool(_HOST_RE.match(host)) and (
            not sep or (port == "*" and loopback) or (port.isdigit() and 0 < int(port) < 65536)
        )
    parts = urlsplit(entry)
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(_HOST_RE.match(parts.hostname or ""))
        and not (parts.query or parts.fragment)
    )


def _validate_consumer(s: Settings) -> None:
    c = s.consumer
    if c.ins_oid not in ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"):
        raise ConfigError(f"consumer.ins_oid: must be an INS OID 1.2.250.1.213.1.4.8/.9/.10/.11, got {c.ins_oid!r}")
    if c.launch_ttl <= 0:
        raise ConfigError(f"consumer.launch_ttl: must be > 0, got {c.launch_ttl}")
    if c.visit_window < 0:
        raise ConfigError(f"consumer.visit_window: must be >= 0, got {c.visit_window}")
    if c.kos_concurrency < 1:
        raise ConfigError(f"consumer.kos_concurrency: must be at least 1, got {c.kos_concurrency}")
    if c.local_pacs_method not in ("c-store", "stow-rs"):
        raise ConfigError(f"consumer.local_pacs_method: must be 'c-store' or 'stow-rs', got {c.local_pacs_method!r}")
    if c.local_pacs_method == "stow-rs" and not c.local_pacs_stow_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"consumer.local_pacs_stow_url: an http(s) URL is required with stow-rs, got {c.local_pacs_stow_url!r}"
        )
    if not 0 < len(c.local_pacs_ae_title) <= 16 or "\\" in c.local_pacs_ae_title:
        raise ConfigError(
            f"consumer.local_pacs_ae_title: 1 to 16 characters without backslash, got {c.local_pacs_ae_title!r}"
        )
    for entry in c.local_pacs_others:
        if parse_pacs(entry) is None:
            raise ConfigError(f"consumer.local_pacs_others: each entry is AE_TITLE@host:port, got {entry!r}")
    if not 0 <= c.local_pacs_port <= 65535:
        raise ConfigError(f"consumer.local_pacs_port: must be between 0 and 65535, got {c.local_pacs_port}")
    for key, value in (
        ("cache_max_bytes", c.cache_max_bytes),
        ("retrieve_connect_timeout", c.retrieve_connect_timeout),
        ("retrieve_read_timeout", c.retrieve_read_timeout),
        ("local_pacs_timeout", c.local_pacs_timeout),
    ):
        if value <= 0:
            raise ConfigError(f"consumer.{key}: must be > 0, got {value}")


def _validate_access(s: Settings) -> None:
    a = s.access
    for entry in a.imaging_professions:
        code, sep, specialty = entry.strip().partition("/")
        if not code.isalnum() or (sep and not specialty.isalnum()):
            raise ConfigError(f"access.imaging_professions: each entry is a profession code or profession/specialty "
                              f"(10, 21/SM98), got {entry!r}")  # fmt: skip
    if a.emergency_ttl <= 0:
        raise ConfigError(f"access.emergency_ttl: must be > 0, got {a.emergency_ttl}")
    if not 1 <= a.emergency_reason_min <= 200:
        raise ConfigError(f"access.emergency_reason_min: must be between 1 and 200, got {a.emergency_reason_min}")


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply DRIMBOX_* overrides, validate, and return the settings."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings = Settings()
    section_classes = {f.name: f for f in dataclasses.fields(Settings)}
    for section_name, values in raw.items():
        if section_name not in section_classes:
            raise ConfigError(f"unknown section [{section_name}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{section_name}: expected a table")
        section = getattr(settings, section_name)
        types = _section_types(type(section))
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{section_name}.{key}: unknown key")
            setattr(section, key, _coerce(f"{section_name}.{key}", value, types[key]))
    for var, value in env.items():
        if not var.startswith(_ENV_PREFIX) or "__" not in var:
            continue
        section_name, _, key = var[len(_ENV_PREFIX) :].lower().partition("__")
        if section_name not in section_classes:
            raise ConfigError(f"{var}: unknown section [{section_name}]")
        section = getattr(settings, section_name)
        types = _section_types(type(section))
        if key not in types:
            raise ConfigError(f"{var}: unknown key {section_name}.{key}")
        setattr(section, key, _coerce(f"{section_name}.{key}", value, types[key]))
    _validate(settings)
    return settings
