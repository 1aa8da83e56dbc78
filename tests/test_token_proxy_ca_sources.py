"""The identity-binding token proxy's CA as azure-workload-identity v1.6 can give it: from a
ConfigMap or a ClusterTrustBundle projection (issue 24). Both are volumes kubelet writes with its
atomic writer — the ``..data`` swap the emulator's CA volume reproduces — and a trust bundle may
hold several CAs at once (the old and the new one while a CA rotates)."""

from __future__ import annotations

from pathlib import Path

from entra_tokend.emulator import Emulator
from support import STORAGE, DaemonProcess, emulator_env, wait_until, write_config


def test_an_overlapping_ca_bundle_in_a_projected_volume_is_trusted_through_a_rotation(
    tmp_path: Path,
) -> None:
    with Emulator(tmp_path / "ib", tls=True, identity_binding=True, access_token_lifetime=4) as ib:
        assert ib.proxy is not None
        proxy = ib.proxy
        config = write_config(tmp_path / "c.toml", {"storage": STORAGE}, min_refresh_interval=0.5)
        env = emulator_env(ib, tmp_path / "out")
        assert env["AZURE_KUBERNETES_CA_FILE"] == str(proxy.ca_file)
        assert proxy.ca_file.is_symlink()  # NAME -> ..data/NAME, as in a ConfigMap volume
        daemon = DaemonProcess(["run", "--config", str(config)], env, tmp_path / "log")
        try:
            daemon.wait_event("token written", timeout=30)
            # A ClusterTrustBundle-style bundle: the new CA and the previous one, one file.
            proxy.rotate_ca(keep_previous=True)
            assert proxy.ca_file.read_text().count("BEGIN CERTIFICATE") == 2
            daemon.wait_event("token proxy CA reloaded", timeout=30)
            before = len(ib.token_requests())
            wait_until(lambda: len(ib.token_requests()) >= before + 2, timeout=30)
            assert all(r.status == 200 and r.via_proxy for r in ib.token_requests()[before:])
            assert daemon.count("token refresh failed") == 0
        finally:
            assert daemon.stop() == 0
