"""tools/stack start-glance/stop-glance (tools/stacklib/glance.py), without
the stack: a stand-in "uwsgi" that forks a worker into its process group
and stays alive, to show that whatever the variant launched is gone
afterwards, its workers too, when its start fails and when it is stopped.
The functional tests run the real glance-api (tests/functional/conftest.py
``glance_variant``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from stacklib import glance, proc  # noqa: E402

# The master outlives nothing it forked: SIGTERM ends it, not its worker.
UWSGI = "#!/bin/sh\nsleep 300 &\nexec sleep 300\n"
NAME = "variant"


def stack_dir(tmp_path: Path) -> Path:
    """What start_variant reads of a stack: the stack's Glance's recorded
    command (its uwsgi, its config dir) and glance-api.conf."""
    uwsgi = tmp_path / "uwsgi"
    uwsgi.write_text(UWSGI)
    uwsgi.chmod(0o755)
    gdir = tmp_path / "glance"
    gdir.mkdir()
    (gdir / "glance-api.conf").write_text("[DEFAULT]\ndebug = False\n")
    (tmp_path / "log").mkdir()
    (tmp_path / proc.CMDS_DIR).mkdir()
    (tmp_path / proc.CMDS_DIR / "glance-api.json").write_text(json.dumps(
        {"argv": [str(uwsgi)], "env": {"OS_GLANCE_CONFIG_DIR": str(gdir)}}))
    return tmp_path


@contextlib.contextmanager
def spawned(base: Path) -> Iterator[list[int]]:
    """The groups of what the test spawned (each a recorded PID), filled by
    the test; SIGKILLed afterwards, by PID, if the code under test left any
    of them running."""
    groups: list[int] = []
    original = proc.spawn

    def spawn(*args: object, **kwargs: object) -> int:
        pid = original(*args, **kwargs)  # type: ignore[arg-type]
        groups.append(pid)
        return pid

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(proc, "spawn", spawn)
        try:
            yield groups
        finally:
            for pgid in groups:
                for pid, _ in proc.survivors(proc.group_members(pgid)):
                    os.kill(pid, signal.SIGKILL)


def wait_for_worker(pgid: int) -> None:
    proc.wait_for("the worker", lambda: len(proc.group_members(pgid)) == 2, 10)


def test_a_variant_that_never_answers_is_stopped_with_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The health wait fails while uwsgi runs (it never answers): the
    start raises, and nothing it launched runs on, nor is it recorded."""
    base = stack_dir(tmp_path)
    monkeypatch.setattr(glance, "HEALTHY_WITHIN", 1.0)
    with spawned(base) as groups:
        def never(port: int) -> bool:  # once the master has forked its worker
            wait_for_worker(groups[-1])
            return False

        monkeypatch.setattr(glance, "_healthy", never)
        with pytest.raises(proc.StackError, match="not ready after 1s"):
            glance.start_variant(base, NAME)
        [pgid] = groups
        assert proc.group_members(pgid) == []
        assert not [n for n, _, _ in proc.recorded(base) if n == glance.VARIANT + NAME]


def test_stopping_a_variant_stops_the_workers_its_master_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its master exits on SIGTERM and leaves its worker running (as a
    master SIGKILLed after 20 s would): stop-glance stops the whole group,
    by PID, and says which PIDs it stopped."""
    base = stack_dir(tmp_path)
    monkeypatch.setattr(glance, "_healthy", lambda port: True)
    with spawned(base) as groups:
        glance.start_variant(base, NAME)
        [pgid] = groups
        wait_for_worker(pgid)
        members = proc.group_members(pgid)
        stopped = glance.stop_variant(base, NAME)
        assert sorted(stopped) == sorted(pid for pid, _ in members) and stopped[0] == pgid
        assert proc.survivors(members) == [] and proc.group_members(pgid) == []
        # Forgotten: a variant of that name starts again, and nothing is left to stop.
        assert glance.stop_variant(base, NAME) == []


def test_a_variant_that_died_is_forgotten_before_one_of_its_name_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its master died on its own (its worker left running): starting one
    of that name again stops that worker and drops the stale record, so
    that stop-glance stops the new one, not the dead one's record."""
    base = stack_dir(tmp_path)
    monkeypatch.setattr(glance, "_healthy", lambda port: True)
    with spawned(base) as groups:
        glance.start_variant(base, NAME)
        wait_for_worker(groups[0])
        orphaned = proc.group_members(groups[0])
        os.kill(groups[0], signal.SIGKILL)
        proc.wait_for("the master's end", lambda: not proc.pid_alive(groups[0]), 10)
        glance.start_variant(base, NAME)
        assert proc.survivors(orphaned) == []
        assert [pid for n, pid, _ in proc.recorded(base) if n == glance.VARIANT + NAME] \
            == [groups[1]]
        wait_for_worker(groups[1])
        assert glance.stop_variant(base, NAME)[0] == groups[1]
        assert proc.group_members(groups[1]) == []
