"""The structure's DMP credentials from the settings: the key and certificate that sign every VIHF."""

from __future__ import annotations

from pathlib import Path

from drimbox.config import Settings
from drimbox.xds.vihf import VihfSigner, generate_test_credentials


def structure_signer(settings: Settings) -> VihfSigner:
    """`[dmp] signing_key` / `signing_cert`, or a self-signed test pair kept under var_dir/credentials.

    Source and consumer share it: the VIHF is signed by the structure, whoever acts in it.
    """
    d = settings.dmp
    if d.signing_key and d.signing_cert:
        return VihfSigner.from_files(Path(d.signing_key), Path(d.signing_cert))
    key, cert = generate_test_credentials(settings.var_path / "credentials", f"drimbox {d.structure_id}")
    return VihfSigner.from_files(key, cert)
