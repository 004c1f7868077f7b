"""The doctor's probes, on fake clusters: what it advises from what it found.

A :class:`FakeClient` stands for a :class:`~warmer.ceph.client.CephClient`:
it answers each probe by its operation name, so that the remedies can be
checked for every answer without a cluster (the functional tests break
the real stack)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any

from tests.unit import fake_rbd
from warmer.ceph.ownership import Inspection
from warmer.doctor import probe
from warmer.doctor.openstack_conf import GlanceStoreConf
from warmer.doctor.report import Diagnosis, Report
from warmer.doctor.rules import OK, PERMISSION, SnapProbe
from warmer.glance.stores import Store

FSID = "11111111-1111-1111-1111-111111111111"


class FakeClient:
    """Answers ``run(op, fn)`` with ``answers[op]``."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    async def connect(self) -> str:
        return FSID

    async def run(self, op: str, fn: Callable[[Any], Any]) -> Any:
        return self.answers[op]


def doctor(glance: FakeClient | None = None) -> probe.Doctor:
    """A Doctor without config: only the probes under test run."""
    d = probe.Doctor.__new__(probe.Doctor)
    d.cinder_conf = None
    d.glance_conf = {"edge": GlanceStoreConf("edge", "rbd", user="glance", ceph_conf="/x",
                                             pool="images")}
    d._client = lambda config: glance  # type: ignore[assignment,method-assign,return-value]
    return d


def target(copy_pool: str, warmer: FakeClient | None = None) -> probe.TargetFacts:
    group = types.SimpleNamespace(glance_store="edge", pool="volumes", copy_pool=copy_pool,
                                  rados_user="warmer", copy_images=True, ceph_conf="/x")
    return probe.TargetFacts("edge", group, warmer, fsid=FSID,  # type: ignore[arg-type]
                             store=Store("edge", "rbd", "images", FSID), copy_pool=copy_pool)


def diagnoses(report: Report) -> list[Diagnosis]:
    return [d for ds in report.deployment.values() for d in ds]


def glance_user_report(copy_pool: str, read: str, write: str) -> list[Diagnosis]:
    report = Report()
    d = doctor(FakeClient({"doctor_caps": (read, write)}))
    asyncio.run(d._glance_user(report, target(copy_pool)))
    return diagnoses(report)


def test_glance_is_never_told_to_take_caps_on_cinders_pool() -> None:
    """With copy_pool = Cinder's pool, Glance's user that cannot read or
    write it is told where copies belong, not to widen its caps there."""
    for read, write in ((PERMISSION, PERMISSION), (OK, PERMISSION)):
        [found] = glance_user_report("volumes", read, write)
        assert found.code.startswith("glance_user_cannot_"), found
        assert found.remedy is not None
        assert "pool=volumes" not in found.remedy, found.remedy
        assert found.remedy.startswith("leave [edge] copy_pool unset"), found.remedy


def test_glance_caps_on_a_copy_pool_of_its_own_keep_its_current_caps() -> None:
    [found] = glance_user_report("warmer-copies", PERMISSION, PERMISSION)
    assert found.remedy == ("ceph auth caps client.glance with its current caps plus "
                            "'profile rbd pool=warmer-copies' on osd")


def test_a_copy_glance_refuses_in_cinders_pool_is_not_fixed_with_caps_there() -> None:
    t = target("volumes", FakeClient({"inspect": None,
                                      "doctor_open": SnapProbe("rbd_image_missing")}))
    t.glance = probe.User("glance", FakeClient({}), "glance-api.conf")  # type: ignore[arg-type]
    t.glance_reads_copy_pool = False
    found: list[Diagnosis] = []
    asyncio.run(doctor()._why_no_copy(t, "img", [], found))
    [refused] = [f for f in found if f.code == "glance_user_cannot_read_copy_pool"]
    assert refused.remedy is not None and "pool=volumes" not in refused.remedy


def warmer_caps_report(copy_pool: str, answers: dict[str, tuple[str, str]]) -> list[Diagnosis]:
    """warmer's caps, with ``answers`` per pool to the stat-and-remove probe."""
    pools = iter(answers.values())

    class Warmer(FakeClient):
        async def run(self, op: str, fn: Callable[[Any], Any]) -> Any:
            return None if op == "doctor_auth_get" else next(pools)

    t = target(copy_pool, Warmer({}))
    found: list[Diagnosis] = []
    asyncio.run(doctor()._warmer_caps(t, found.append))
    return found


def test_every_caps_remedy_keeps_the_users_current_caps() -> None:
    """``ceph auth caps`` replaces all of a user's caps: a remedy that names
    it says to give the current ones too."""
    found = warmer_caps_report("images", {"images": (OK, PERMISSION),
                                          "volumes": (PERMISSION, PERMISSION)})
    found += warmer_caps_report("volumes", {"volumes": (OK, PERMISSION), "again": (OK, OK)})
    found += glance_user_report("warmer-copies", PERMISSION, PERMISSION)
    remedies = [d.remedy for d in found if d.remedy and "ceph auth caps" in d.remedy]
    assert len(remedies) >= 3, found
    for remedy in remedies:
        assert "with its current caps" in remedy, remedy
    for d in found:
        assert "pool=volumes'" not in (d.remedy or "").replace("rbd-read-only pool=volumes'", ""), d


def clone_format(t: probe.TargetFacts) -> Diagnosis:
    report = Report()
    asyncio.run(doctor()._clone_format(report, t))
    [note] = diagnoses(report)
    return note


def test_warmers_own_clone_format_says_nothing_of_cinders() -> None:
    """warmer's ceph.conf or config section at clone v2 is not Cinder's:
    without Cinder's own connection the format is unknown."""
    warmer = FakeClient({"doctor_pool_config": "", "doctor_osd_dump": "luminous",
                         "doctor_conf_get": "2", "doctor_config_dump": "2"})
    t = target("images", warmer)
    t.group.cinder_user = None
    note = clone_format(t)
    assert note.code == "clone_format_unknown" and t.v1 is None, note
    # Cinder's user from warmer.conf connects with warmer's ceph.conf: no better.
    t.group.cinder_user = "cinder"
    t.cinder = probe.User("cinder", warmer, "warmer.conf")  # type: ignore[arg-type]
    assert clone_format(t).code == "clone_format_unknown"


def test_cinders_clone_format_is_read_as_cinder_with_its_ceph_conf() -> None:
    warmer = FakeClient({"doctor_pool_config": "", "doctor_osd_dump": "luminous"})
    cinder = FakeClient({"doctor_pool_config": "", "doctor_conf_get": "2"})
    cinder.config = types.SimpleNamespace(conf_file="/etc/ceph/ceph.conf")  # type: ignore[attr-defined]
    t = target("images", warmer)
    t.cinder = probe.User("cinder", cinder, "cinder.conf")  # type: ignore[arg-type]
    note = clone_format(t)
    assert note.code == "clone_v2" and t.v1 is False, note
    assert "with /etc/ceph/ceph.conf from cinder.conf" in note.message
    # Cinder's pool overrides every client's setting.
    cinder.answers["doctor_pool_config"] = "1"
    assert clone_format(t).code == "clone_v1" and t.v1 is True


def test_warmer_that_may_write_cinders_pool_is_unsafe() -> None:
    found = warmer_caps_report("images", {"images": (OK, OK), "volumes": (OK, OK)})
    [unsafe] = [d for d in found if d.unsafe]
    assert unsafe.code == "warmer_can_write_cinder_pool" and unsafe.level == "UNSAFE"


def test_the_snapshot_probe_opens_the_snapshot_without_librbds_crashing_open(
        clusters: Any, monkeypatch: Any) -> None:
    """The probe answers as Cinder's open would, through
    bindings.set_snapshot: the fake librbd refuses the open librbd 16.2
    corrupts memory on (read-only *at* a snapshot, docs/ceph-bugs.md), so
    putting that open back fails here."""
    monkeypatch.setattr(probe, "modules", fake_rbd.modules)
    central, _ = clusters
    central.put_image("images", "protected", b"x" * 4096)
    central.put_image("images", "unprotected", b"x" * 4096, protect=False)
    cluster = fake_rbd.Rados("central.conf")
    assert probe._open_snapshot(cluster, "images", "protected", "snap") == SnapProbe(OK, True)
    assert probe._open_snapshot(cluster, "images", "unprotected", "snap") == SnapProbe(OK, False)
    assert probe._open_snapshot(cluster, "images", "protected", "other").result == \
        "snapshot_missing"
    assert probe._open_snapshot(cluster, "images", "gone", "snap").result == "rbd_image_missing"


# -- warmer's copy where Cinder never sees a location added to the image -------------

IMAGE = "6f1c0a4e-5a1b-4c1e-9a3d-0f1e2d3c4b5a"
CENTRAL = "33333333-3333-3333-3333-333333333333"
GLANCES = f"rbd://{CENTRAL}/images/{IMAGE}/snap"  # direct_url: Glance's own, at central
OURS = f"rbd://{FSID}/images/{IMAGE}/snap"  # warmer's copy in edge


class FakeGlance:
    """GET /v2/images/{id} (``body``) and its locations API (``api``)."""

    def __init__(self, body: dict[str, Any], api: tuple[int, list[str] | None]) -> None:
        self.body, self.api = body, api

    async def image_body(self, image_id: str) -> dict[str, Any]:
        return self.body

    async def image_locations(self, image_id: str) -> tuple[int, list[str] | None]:
        return self.api

    async def stores(self, *, fresh: bool = False) -> dict[str, Store]:
        return {"central": Store("central", "rbd", "images", CENTRAL),
                "edge": Store("edge", "rbd", "images", FSID)}


def image_report(shown: dict[str, Any], api: tuple[int, list[str] | None],
                 glance_reads_copy_pool: bool = True,
                 cinder_service_auth: bool | None = None) -> list[Diagnosis]:
    """The edge verdict's diagnoses for a raw image whose data is at
    central, with warmer's complete, protected copy in edge; Glance shows
    ``shown`` of its locations, and its locations API answers ``api``."""
    warmer = FakeClient({"inspect": Inspection(IMAGE, IMAGE, True, None, "complete", True),
                         "doctor_open": SnapProbe(OK, True)})
    t = target("images", warmer)
    t.glance = probe.User("glance", FakeClient({}), "glance-api.conf")  # type: ignore[arg-type]
    t.glance_reads_copy_pool = glance_reads_copy_pool
    d = doctor()
    if cinder_service_auth is not None:
        d.cinder_conf = types.SimpleNamespace(  # type: ignore[assignment]
            glance_service_auth=cinder_service_auth)
    glance = FakeGlance({"id": IMAGE, "status": "active", "disk_format": "raw", "size": 1,
                         **shown}, api)
    d.glance = d.stores = glance  # type: ignore[assignment]
    d.targets = [t]
    img = asyncio.run(d._image(IMAGE))
    [edge] = img.verdicts
    assert not edge.clones
    return edge.diagnoses


def found(diagnoses: list[Diagnosis], code: str) -> Diagnosis:
    [diagnosis] = [d for d in diagnoses if d.code == code]
    assert diagnosis.remedy is not None, diagnosis
    return diagnosis


def test_a_published_copy_where_cinder_sees_direct_url_alone_points_at_only_direct_url() -> None:
    """warmer's copy is in edge and a location of the image, but Glance
    shows direct_url alone (show_multiple_locations off) and Cinder reads
    nothing else: publishing cannot help, so the doctor never says
    copy_not_published nor `warmer evaluate`, and Glance's caps are not
    what keeps this copy from Cinder."""
    diagnoses = image_report({"direct_url": GLANCES}, (200, [GLANCES, OURS]),
                             glance_reads_copy_pool=False)
    assert "copy_not_published" not in {d.code for d in diagnoses}, diagnoses
    unseen = found(diagnoses, "copy_unseen_by_cinder")
    assert unseen.blocking and "and a location of the image" in unseen.message
    assert unseen.remedy is not None and unseen.remedy.startswith("fix only_direct_url first")
    assert "evaluate" not in unseen.remedy and "warmer show" not in unseen.remedy
    caps = found(diagnoses, "glance_user_cannot_read_copy_pool")
    assert caps.remedy is not None and caps.remedy.startswith("fix only_direct_url first")
    assert not caps.blocking  # this copy is a location already
    assert found(diagnoses, "no_location_in_cluster").blocking


def test_an_unpublished_copy_cinder_would_not_see_is_sent_to_what_hides_it_first() -> None:
    """Not a location either (Glance refused it), and Glance shows no
    location at all, nor its locations API to warmer: the cause that
    makes publishing moot comes first, then why it was refused."""
    diagnoses = image_report({}, (403, None), glance_reads_copy_pool=False)
    assert "copy_not_published" not in {d.code for d in diagnoses}, diagnoses
    unseen = found(diagnoses, "copy_unseen_by_cinder")
    assert "may be a location" in unseen.message and "sees no location at all" in unseen.message
    assert unseen.remedy is not None and unseen.remedy.startswith("fix locations_hidden first")
    caps = found(diagnoses, "glance_user_cannot_read_copy_pool")
    assert caps.blocking and caps.remedy is not None
    assert caps.remedy.startswith("fix locations_hidden first")
    assert caps.remedy.endswith("'profile rbd pool=images' on osd")
    # Known not to be a location: then `warmer show` says why.
    diagnoses = image_report({"direct_url": GLANCES}, (200, [GLANCES]))
    unseen = found(diagnoses, "copy_unseen_by_cinder")
    assert "and no location of the image" in unseen.message
    assert unseen.remedy is not None and f"`warmer show {IMAGE}`" in unseen.remedy


def test_a_copy_that_is_no_location_where_cinder_sees_them_all_is_not_published() -> None:
    """Cinder sees every location (show_multiple_locations): warmer's copy
    is not among them, and publishing it is the remedy."""
    diagnoses = image_report({"direct_url": GLANCES, "locations": [{"url": GLANCES}]},
                             (403, None))
    assert "copy_unseen_by_cinder" not in {d.code for d in diagnoses}
    fix = found(diagnoses, "copy_not_published").remedy
    assert fix is not None and f"`warmer evaluate {IMAGE}`" in fix


def test_a_copy_cinder_may_see_through_the_locations_api_is_not_called_unpublished() -> None:
    """Cinder has service credentials and reads the locations API; warmer's
    own user is refused there (403) and Glance lists no locations: whether
    Cinder sees warmer's copy is unknown, so the doctor neither says it is
    no location nor sends the operator to publish it again (a review's
    case)."""
    diagnoses = image_report({"direct_url": GLANCES}, (403, None), cinder_service_auth=True)
    unknown = found(diagnoses, "copy_not_published")
    assert not unknown.blocking and "unknown" in unknown.message
    assert unknown.remedy is not None and "warmer evaluate" not in unknown.remedy
