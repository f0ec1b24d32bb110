"""Pro Santé Connect login and sessions, bearer-token checks for box-to-box calls, and the ANS whitelist."""

from drimbox.auth.oidc import OidcClient, OidcError, TokenSet
from drimbox.auth.professional import Professional
from drimbox.auth.routes import (
    AUTH_GATE,
    AuthGate,
    access_token,
    current_professional,
    require_login,
    require_professional,
    safe_next,
)
from drimbox.auth.tokens import BearerTokenChecker, TokenError
from drimbox.auth.whitelist import AnsWhitelist, Whitelist, WhitelistError, verify_whitelist

__all__ = [
    "AUTH_GATE",
    "AnsWhitelist",
    "AuthGate",
    "BearerTokenChecker",
    "OidcClient",
    "OidcError",
    "Professional",
    "TokenError",
    "TokenSet",
    "Whitelist",
    "WhitelistError",
    "access_token",
    "current_professional",
    "require_login",
    "require_professional",
    "safe_next",
    "verify_whitelist",
]
