"""The shipped config sample and systemd unit stay true to the code."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _install_tool() -> Any:
    loader = importlib.machinery.SourceFileLoader("warmer_install", str(ROOT / "tools/install"))
    spec = importlib.util.spec_from_loader("warmer_install", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_controller_config_loads_and_logs_to_the_journal() -> None:
    conf = warmer_conf.load(["--config-file", str(ROOT / "config/warmer-controller.conf")])
    assert conf.enabled_targets == ["ceph"] and conf.ceph.rados_user == "warmer"
    assert conf.use_journal and not conf.use_stderr


def test_install_puts_things_where_the_unit_expects_them() -> None:
    tool = _install_tool()
    unit = (ROOT / "systemd/warmer.service").read_text().splitlines()
    exec_start = [x for x in unit if x.startswith("ExecStart=")][0]
    assert exec_start == (f"ExecStart={tool.PREFIX}/bin/warmer-daemon "
                          f"--config-file {tool.CONF_DIR}/warmer.conf")
    assert f"User={tool.USER}" in unit and f"Group={tool.USER}" in unit
    assert f"Documentation=file://{tool.DOC_DIR}/README.md" in unit
    # Debian's modules must be importable in the venv the daemon runs in.
    assert set(tool.DEBIAN_PACKAGES.values()) >= {"rados", "rbd", "systemd.journal"}


def test_systemd_unit_exposure_is_at_most_2() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: tools/bootstrap installs systemd"
    # --threshold is the exposure times 10: fails above 2.0.
    res = subprocess.run([analyze, "security", "--offline=true", "--threshold=20",
                          "--no-pager", str(ROOT / "systemd/warmer.service")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
