"""The shipped config sample and systemd unit stay true to the code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warmer import conf as warmer_conf
from warmer.conf import http, targets

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_matches_the_code(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    subprocess.run([str(Path(sys.executable).parent / "oslo-config-generator"),
                    "--config-file", str(ROOT / "config/warmer-config-generator.conf"),
                    "--output-file", str(out)], check=True, cwd=ROOT)
    assert out.read_text() == (ROOT / "config/warmer.conf.sample").read_text(), \
        "config/warmer.conf.sample drifted: run tools/genconfig"


def test_local_config_loads_with_its_target_group(tmp_path: Path) -> None:
    conf = warmer_conf.load(["--config-file", str(ROOT / "config/warmer-local.conf")])
    assert conf.enabled_targets == ["central", "edge"]
    assert conf.central.rados_user == "warmer" and conf.central.pool == "volumes"
    assert {o.name for o in targets.TARGET_OPTS} <= set(conf.central.keys())


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: tools/bootstrap installs systemd"
    daemon = Path(sys.executable).parent / "warmer-daemon"
    unit = (ROOT / "systemd/warmer.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=on-failure" in unit
    # verify checks that ExecStart exists; point it at this venv's daemon.
    (tmp_path / "warmer.service").write_text(
        unit.replace("/opt/warmer/bin/warmer-daemon", str(daemon)))
    res = subprocess.run([analyze, "verify", str(tmp_path / "warmer.service")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "warmer.service" not in res.stderr, res.stderr


def test_systemd_unit_creates_the_admin_socket_directory() -> None:
    unit = (ROOT / "systemd/warmer.service").read_text().splitlines()
    [opt] = [o for o in http.OPTS if o.name == "admin_socket"]
    assert f"RuntimeDirectory={Path(opt.default).parent.name}" in unit
    assert Path(opt.default).parent.parent == Path("/run")


@pytest.mark.parametrize("bad", [["--config-file", "/nonexistent.conf"]])
def test_missing_config_file_is_a_clear_error(bad: list[str]) -> None:
    from oslo_config import cfg
    with pytest.raises(cfg.ConfigFilesNotFoundError):
        warmer_conf.load(bad)
