"""TD0.2 / TD0.3, what they mean: actions, DMP services, authorisation values and the answers' meaning."""

from __future__ import annotations

from dataclasses import dataclass

# The DMP's services under its base URL, as the ANS reference DRIMbox builds them (BaseRequest.serviceName):
# TD0.2 at {base}/patients (HL7 v3, xds/td02.py), TD0.3 at {base}/habilitations (xds/td03.py).
PATIENTS_SERVICE = "patients"
HABILITATIONS_SERVICE = "habilitations"
ACTION_TD02 = "urn:hl7-org:v3:PRPA_IN201307UV02"
ACTION_TD02_RESPONSE = "urn:hl7-org:v3:PRPA_IN201308UV02"
ACTION_TD03 = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization"
ACTION_TD03_RESPONSE = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorizationResponse"

# Fault subcode (in ACCESS_NS) of a consultation (ITI-18/ITI-43) refused for want of an access authorisation.
# How the real DMP words that refusal is not in the public material: this subcode is drimbox's, spoken by
# the simulator and recognised by the consumer, and carries no part of the TD0.2/TD0.3 format.
ACCESS_NS = "urn:drimbox:dmp:access:1"
ACCESS_DENIED = "AccessDenied"

# The authorisation the TD0.2 answer gives in its attentionLine AUTORISATION.
VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE = "VALIDE", "EXPIREE", "INTERDITE", "NON_EXISTANTE"
AUTHORIZATIONS = frozenset({VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE})
# TD0.3 actions.
ADD, REMOVE = "AJOUT", "SUPPRESSION"
# TD0.3 answer statuses: DMPOK is the DMP's; the refusals are the simulator's names for its rules (the DMP's
# own list of statuses is not in the public material), all in the DMP's `DMP...` form.
DMP_OK = "DMPOK"
DMP_NOT_FOUND = "DMPNotFound"
DMP_EXCLUDED_PS = "DMPAccessDeniedByExcludedPs"  # the patient barred this professional (INTERDITE)
DMP_OPPOSITION = "DMPAccessDeniedByPatientOpposition"  # the patient opposes any consultation


class AccessFormatError(ValueError):
    """A TD0.2/TD0.3 message that does not have the DMP's shape."""


@dataclass(frozen=True)
class AccessStatus:
    """What TD0.2 says about one patient and the VIHF's professional."""

    dmp_exists: bool
    authorization: str  # VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE
    reason: str = ""
    treating_physician: bool = False  # attentionLine STATUT_MT

    @property
    def granted(self) -> bool:
        return self.dmp_exists and self.authorization == VALIDE


@dataclass(frozen=True)
class DeclareResult:
    """The answer to TD0.3: the DMP's status (DMPOK when recorded) and its context text."""

    status: str
    context: str = ""

    @property
    def granted(self) -> bool:
        return self.status == DMP_OK
