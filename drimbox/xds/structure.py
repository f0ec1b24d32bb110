"""The structure's DMP credentials from the settings: the key and certificate that sign every VIHF."""

from __future__ import annotations

from drimbox.config import Settings
from drimbox.state.credentials import structure_credentials
from drimbox.xds.vihf import VihfSigner


def structure_signer(settings: Settings) -> VihfSigner:
    """`[dmp] signing_key` / `signing_cert`, or a self-signed test pair kept under var_dir/credentials.

    Source and consumer share it: the VIHF is signed by the structure, whoever acts in it.
    """
    return VihfSigner.from_files(*structure_credentials(settings))
