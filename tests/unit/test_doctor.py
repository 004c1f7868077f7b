"""The doctor's rules (a replay of Cinder's clone_image) and config reading."""

from __future__ import annotations

import ast
from pathlib import Path

from warmer.doctor import rules
from warmer.doctor.openstack_conf import read_cinder_conf, read_glance_conf
from warmer.doctor.report import Diagnosis, ImageReport, Report, Verdict
from warmer.doctor.rules import GlanceView, SnapProbe

FSID = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"
ROOT = Path(__file__).resolve().parents[2]
IMG = "6f1c0a4e-5a1b-4c1e-9a3d-0f1e2d3c4b5a"
URL = f"rbd://{FSID}/images/{IMG}/snap"
COPY = f"rbd://{FSID}/images/{IMG}-b/snap"


def replay(urls: list[str], probes: dict[str, SnapProbe], *, v1: bool | None = True,
           raw: bool = True, misplaced: dict[str, SnapProbe] | None = None
           ) -> Verdict:
    return rules.replay("edge", FSID, urls, raw=raw, probes=probes, misplaced=misplaced or {},
                        known_fsids={FSID}, v1=v1, cinder_user="cinder")


def codes(verdict: Verdict, blocking: bool | None = None) -> set[str]:
    return {d.code for d in verdict.diagnoses if blocking is None or d.blocking == blocking}


def test_clone_format_follows_librbd() -> None:
    assert rules.clone_v1("auto", "luminous") is True
    assert rules.clone_v1("auto", "mimic") is False
    assert rules.clone_v1("1", "reef") is True
    assert rules.clone_v1("2", "luminous") is False
    assert rules.clone_v1("auto", None) is None
    # Not known is not auto.
    assert rules.clone_v1(None, "luminous") is None


def facts(pool: str | None = "", client: str | None = "auto", compat: str | None = "luminous",
          db: str | None = None) -> rules.CloneFacts:
    return rules.CloneFacts("volumes", pool, "cinder", client, "test", compat, db)


def test_cinders_clone_format_is_its_pools_then_its_own_config() -> None:
    """librbd applies the overrides of the pool it clones into above the
    client's config; without Cinder's own config (not warmer's), the format
    is unknown, whatever the config database says."""
    assert facts().v1 is True
    assert facts(client="2").v1 is False
    assert facts(pool="1", client="2").v1 is True
    assert facts(pool="2", client=None).v1 is False
    assert facts(client=None, db="2").v1 is None
    assert facts(pool=None, client="2").v1 is None
    note = rules.clone_format_note(facts(client=None, db="2"))
    assert note.code == "clone_format_unknown" and note.remedy is not None
    assert "--cinder-conf" in note.remedy and "config database" in note.message
    assert rules.clone_format_note(facts(client="2")).code == "clone_v2"


def test_an_unprotected_snapshot_under_an_unknown_clone_format_does_not_clone() -> None:
    verdict = replay([URL], {URL: SnapProbe("ok", protected=False)}, v1=None)
    assert not verdict.clones and codes(verdict, blocking=True) == {"clone_format_unknown"}
    # Protected, it clones whatever the format.
    assert replay([URL], {URL: SnapProbe("ok", protected=True)}, v1=None).clones


def test_the_first_location_that_passes_is_cloned_even_when_unprotected_under_v1() -> None:
    verdict = replay([URL, COPY], {URL: SnapProbe("ok", protected=False),
                                   COPY: SnapProbe("ok", protected=True)})
    assert not verdict.clones and verdict.location == URL
    assert codes(verdict, blocking=True) == {"snapshot_unprotected"}


def test_an_unprotected_snapshot_clones_under_v2() -> None:
    verdict = replay([URL], {URL: SnapProbe("ok", protected=False)}, v1=False)
    assert verdict.clones and "snapshot_unprotected_v2" in codes(verdict)


def test_a_location_that_fails_is_a_warning_when_a_later_one_clones() -> None:
    verdict = replay([URL, COPY], {URL: SnapProbe("permission_denied"),
                                   COPY: SnapProbe("ok", protected=True)})
    assert verdict.clones and verdict.location == COPY
    assert "cinder_user_cannot_read" in codes(verdict, blocking=False)


def test_malformed_other_cluster_and_wrong_fsid() -> None:
    wrong = f"rbd://{'3' * 8}-3333-3333-3333-{'3' * 12}/images/{IMG}/snap"
    verdict = replay([f"rbd://{FSID}//{IMG}/snap", f"rbd://{OTHER}/images/{IMG}/snap", wrong],
                     {}, misplaced={wrong: SnapProbe("ok", protected=True)})
    assert not verdict.clones
    assert codes(verdict) == {"location_malformed", "location_fsid_wrong"}
    # A location of another known cluster alone: nothing here.
    verdict = replay([f"rbd://{OTHER}/images/{IMG}/snap"], {})
    assert codes(verdict, blocking=True) == {"no_location_in_cluster"}


def test_not_raw_refuses_every_location() -> None:
    verdict = replay([URL], {URL: SnapProbe("ok", protected=True)}, raw=False)
    assert not verdict.clones and codes(verdict) == {"disk_format_not_raw"}


def test_what_cinder_sees_of_glance() -> None:
    both = GlanceView(URL, [URL, COPY], 403)
    assert rules.cinder_locations(both, False)[0] == [URL, COPY]
    only_direct = GlanceView(URL, None, 403)
    urls, notes = rules.cinder_locations(only_direct, False)
    assert urls == [URL] and {d.code for d in notes} == {"only_direct_url"}
    # Cinder 29's fallback uses ``locations`` only next to ``direct_url``.
    urls, notes = rules.cinder_locations(GlanceView(None, [URL], 403), False)
    assert urls == [] and [d.code for d in notes if d.blocking] == ["locations_hidden"]
    # With service credentials, the locations API shows them all.
    urls, notes = rules.cinder_locations(GlanceView(None, None, 200, [URL, COPY]), True)
    assert urls == [URL, COPY] and {d.code for d in notes} == {"locations_api"}
    # ... which warmer's own user may not read: then Cinder may see more.
    urls, notes = rules.cinder_locations(GlanceView(URL, None, 403), True)
    [note] = notes
    assert urls == [URL] and note.code == "locations_api" and "(HTTP 403)" in note.message


def test_cinder_conf_backends_fall_back_on_backend_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cinder.conf"
    path.write_text("[DEFAULT]\nenabled_backends = a, b, lvm\n"
                    "[backend_defaults]\nrbd_ceph_conf = /etc/ceph/x.conf\nrbd_pool = vols\n"
                    "[a]\nvolume_driver = cinder.volume.drivers.rbd.RBDDriver\nrbd_user = c\n"
                    "[b]\nvolume_driver = cinder.volume.drivers.rbd.RBDDriver\n"
                    "rbd_pool = other\n"
                    "[lvm]\nvolume_driver = cinder.volume.drivers.lvm.LVMVolumeDriver\n"
                    "[glance]\nauth_type = password\n")
    conf = read_cinder_conf(str(path))
    a, b, lvm = conf.backends
    assert (a.user, a.pool, a.ceph_conf, a.is_rbd) == ("c", "vols", "/etc/ceph/x.conf", True)
    assert (b.user, b.pool) == ("cinder", "other")
    assert not lvm.is_rbd and conf.glance_service_auth


def test_glance_conf_stores(tmp_path: Path) -> None:
    path = tmp_path / "glance-api.conf"
    path.write_text("[DEFAULT]\nenabled_backends = central:rbd, local:file\n"
                    "[central]\nrbd_store_user = glance\nrbd_store_ceph_conf = /c.conf\n")
    stores = read_glance_conf(str(path))
    assert stores["central"].user == "glance" and stores["central"].pool == "images"
    assert stores["local"].type == "file" and stores["local"].user is None


def test_a_report_without_an_image_is_blocked_only_by_blocking_deployment_findings() -> None:
    report = Report()
    report.add("edge", rules.clone_format_note(facts()))
    assert not report.blocked
    report.add("edge", Diagnosis("x", "y", "z", blocking=True))
    assert report.blocked and "[BLOCKING] x: y" in "\n".join(report.lines())


def test_an_image_cinder_sees_no_location_of_is_not_sent_to_pinning() -> None:
    """Without any location there is nothing to copy: the remedy points at
    the image's own diagnoses (no data, locations hidden), not at demand."""
    verdict = replay([], {})
    assert not verdict.clones and codes(verdict, blocking=True) == {"no_location_in_cluster"}
    [diagnosis] = verdict.diagnoses
    assert diagnosis.remedy is not None and "pin" not in diagnosis.remedy
    assert "image's own diagnoses" in diagnosis.remedy
    # With a location elsewhere, demand or a pin is the way.
    [diagnosis] = replay([f"rbd://{OTHER}/images/{IMG}/snap"], {}).diagnoses
    assert diagnosis.remedy is not None and "pin it" in diagnosis.remedy


def test_an_image_cinder_sees_by_direct_url_alone_is_not_sent_to_pinning() -> None:
    """warmer publishes a copy as a location after direct_url: where Cinder
    sees direct_url alone, that copy is never tried, and a pin does not help."""
    other = [f"rbd://{OTHER}/images/{IMG}/snap"]
    verdict = rules.replay("edge", FSID, other, raw=True, probes={}, misplaced={},
                           known_fsids={FSID, OTHER}, v1=True, cinder_user="cinder",
                           direct_url_only=True)
    [diagnosis] = verdict.diagnoses
    assert diagnosis.code == "no_location_in_cluster" and diagnosis.blocking
    assert diagnosis.remedy is not None and "pin" not in diagnosis.remedy
    assert "only_direct_url" in diagnosis.remedy


# Diagnoses that no functional test breaks on the stack, and why. Every
# other code is asserted in the doctor's report by
# tests/functional/test_doctor*.py (:func:`asserted_codes`).
NOT_ON_THE_STACK: dict[str, str] = {}


def diagnosis_codes() -> set[str]:
    """Every code warmer/doctor/ gives a Diagnosis (a literal, or both
    branches of a conditional)."""
    found: set[str] = set()
    for path in (ROOT / "warmer" / "doctor").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "Diagnosis" and node.args):
                continue
            code = node.args[0]
            branches = [code.body, code.orelse] if isinstance(code, ast.IfExp) else [code]
            for branch in branches:
                assert isinstance(branch, ast.Constant), ast.unparse(node)
                found.add(branch.value)
    return found


# Helpers of tests/functional/test_doctor.py that assert a code is in the
# doctor's report themselves, and which of their arguments is the code.
REPORT_ASSERTS = {"named": 2, "remedy": 1}
# Compare ops that hold a string on the left (In, <, <=), on either side
# (==), or on the right (>, >=) to be among ``codes(...)`` on the other side.
LEFT_IN_RIGHT = (ast.In, ast.Lt, ast.LtE)
RIGHT_IN_LEFT = (ast.Gt, ast.GtE)


def asserted_codes(source: str) -> set[str]:
    """The codes that a functional test asserts the doctor's report has:
    the code given to ``named`` or ``remedy`` (which assert it is there),
    or the strings an ``assert`` holds to be among ``codes(...)``:
    ``"x" in codes(d)``, ``{"x", "y"} <= codes(d)``, ``codes(d) == {"x"}``,
    alone or in an ``and``. A code asserted absent (``not in``, ``not``,
    ``!=``), held to be a subset of what might be there (``codes(d) <=
    {"x"}``), one side of an ``or``, or only mentioned (a comment, a
    docstring, an argument) is not."""

    def has_codes(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                   and n.func.id == "codes" for n in ast.walk(node))

    def strings(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    def held(test: ast.expr) -> set[str]:
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            return set().union(*(held(value) for value in test.values))
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
            return set()
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, LEFT_IN_RIGHT) and has_codes(right):
            return strings(left)
        if isinstance(op, RIGHT_IN_LEFT) and has_codes(left):
            return strings(right)
        if isinstance(op, ast.Eq):
            return (strings(left) if has_codes(right) else set()) | (
                strings(right) if has_codes(left) else set())
        return set()

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            found |= held(node.test)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in REPORT_ASSERTS
              and len(node.args) > REPORT_ASSERTS[node.func.id]):
            code = node.args[REPORT_ASSERTS[node.func.id]]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                found.add(code.value)
    return found


def test_asserted_codes_are_those_the_report_is_checked_for() -> None:
    source = ('"""not_this"""\n# "nor_this"\nx = "nor_that"\n'
              'assert "this" in codes(d)\nassert {"both", "of"} <= codes(d)\n'
              'fix = named(d, t, "named_one", blocking=True)\nassert "a" in fix\n'
              'assert "x" in remedy(d, "remedied")\nassert codes(d) == {"equal"}\n'
              'assert rc == 1 and "anded" in codes(d)\n')
    assert asserted_codes(source) == {"this", "both", "of", "named_one", "remedied", "equal",
                                      "anded"}


def test_a_code_asserted_absent_or_maybe_there_is_not_asserted() -> None:
    """Only a code the report is held to have counts as broken on purpose."""
    for source in ('assert "never_positive" not in codes(d)\n',
                   'assert not {"never_positive"} & codes(d)\n',
                   'assert codes(d) != {"never_positive"}\n',
                   'assert codes(d) <= {"never_positive", "other"}\n',
                   'assert "never_positive" in codes(d) or rc == 0\n',
                   'assert rc == 0 and "never_positive" not in codes(d)\n',
                   'assert "never_positive" in text, codes(d)\n'):
        assert asserted_codes(source) == set(), source


def test_every_diagnosis_is_broken_on_purpose_on_the_stack_or_says_why_not() -> None:
    asserted = set().union(*(asserted_codes(p.read_text()) for p in
                             (ROOT / "tests" / "functional").glob("test_doctor*.py")))
    codes_ = diagnosis_codes()
    assert len(codes_) > 40
    untested = codes_ - asserted
    assert untested == set(NOT_ON_THE_STACK), (untested - set(NOT_ON_THE_STACK),
                                               set(NOT_ON_THE_STACK) - untested)


def test_an_unsafe_deployment_exits_non_zero_even_where_the_image_clones() -> None:
    """warmer's user may write Cinder's pool (invariant 7): wrong whatever
    the image does, so the exit status is 1 with or without an image."""
    report = Report()
    report.add("edge", Diagnosis("warmer_can_write_cinder_pool", "x", "y", unsafe=True))
    assert report.blocked and report.unsafe
    report.image = ImageReport(IMG, verdicts=[Verdict("edge", True, URL)])
    assert not report.image.blocked
    assert report.blocked and report.as_json()["unsafe"] is True
    assert "    [UNSAFE] warmer_can_write_cinder_pool: x" in report.lines()


def test_a_target_the_doctor_could_not_check_blocks_an_images_report() -> None:
    """Nothing shows that the image clones there: exit 1, and it says "NOT
    CHECKED", not "DOES NOT CLONE"."""
    report = Report()
    report.image = ImageReport(IMG, verdicts=[
        Verdict("central", True, URL),
        Verdict("edge", False, None, [Diagnosis("target_not_checked", "x", "y", True)],
                checked=False)])
    assert report.blocked
    assert "  edge: NOT CHECKED" in report.lines()
    assert report.as_json()["image"]["targets"][1]["checked"] is False
