"""Site mapping: which targets a demand event counts for (warmer.sites)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer import conf as warmer_conf
from warmer import events
from warmer.sites import SiteConfig, SiteConfigError, SiteMap

IMAGE_ID = "4f3c7b8e-1d2a-4c5b-9e6f-0a1b2c3d4e5f"
T0 = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
META = {"message_id": "m-1", "timestamp": "2026-11-25 10:00:00"}

CENTRAL = SiteConfig("central", backends=("ceph-central",), zones=("az-central",))
EDGE = SiteConfig("edge", backends=("ceph-edge",), zones=("az-edge",))


def central_edge(**kw: Any) -> SiteMap:
    return SiteMap([CENTRAL, EDGE], **kw)


def volume(host: str | None, zone: str | None = None, *,
           publisher_id: str | None = None) -> events.Event:
    payload: dict[str, Any] = {
        "volume_id": "vol-1", "host": host, "availability_zone": zone,
        "glance_metadata": [{"key": "image_id", "value": IMAGE_ID}]}
    ev = events.parse("volume.create.end", payload, META, publisher_id=publisher_id)
    assert isinstance(ev, events.VolumeCreatedFromImage)
    return ev


def cache(kind: str, host: str) -> events.Event:
    ev = events.parse(f"image_volume_cache.{kind}", {"image_id": IMAGE_ID, "host": host},
                      META, publisher_id="volume.ctl")
    assert isinstance(ev, events.ImageCacheUsed)
    return ev


SENT = events.ImageSent(IMAGE_ID, "m-2", T0)


def test_volume_counts_where_its_backend_is() -> None:
    sites = central_edge()
    assert sites.sites_of(volume("c1@ceph-central#ceph-central")) == {"central"}
    assert sites.sites_of(volume("e1@ceph-edge#ceph-edge")) == {"edge"}


def test_publisher_host_is_used_when_the_payload_has_none() -> None:
    sites = central_edge()
    ev = volume(None, publisher_id="volume.e1.example.org@ceph-edge#rbd")
    assert sites.sites_of(ev) == {"edge"}


def test_payload_host_wins_over_the_publisher() -> None:
    sites = central_edge()
    ev = volume("c1@ceph-central#rbd", publisher_id="volume.e1@ceph-edge#rbd")
    assert sites.sites_of(ev) == {"central"}


def test_availability_zone_maps_when_the_backend_does_not() -> None:
    sites = central_edge()
    assert sites.sites_of(volume("x@lvm#lvm", "az-edge")) == {"edge"}
    assert sites.sites_of(volume(None, "az-central")) == {"central"}


def test_backend_and_zone_that_name_different_targets_count_for_both() -> None:
    sites = central_edge()
    assert sites.sites_of(volume("c1@ceph-central#x", "az-edge")) == {"central", "edge"}


@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_cache_events_count_where_their_host_is(kind: str) -> None:
    sites = central_edge()
    assert sites.sites_of(cache(kind, "e1@ceph-edge#rbd")) == {"edge"}
    assert sites.sites_of(cache(kind, "c1@ceph-central#rbd")) == {"central"}


def test_image_send_has_no_site_and_goes_to_unmapped() -> None:
    assert central_edge().sites_of(SENT) == {"central", "edge"}
    assert central_edge(unmapped=["central"]).sites_of(SENT) == {"central"}


def test_unmapped_demand_defaults_to_every_target() -> None:
    sites = central_edge()
    assert sites.unmapped == {"central", "edge"}
    assert sites.sites_of(volume("x@lvm#lvm", "nova")) == {"central", "edge"}
    assert sites.sites_of(volume(None)) == {"central", "edge"}


def test_unmapped_demand_to_named_targets() -> None:
    sites = central_edge(unmapped=["central"])
    assert sites.sites_of(volume("x@lvm#lvm", "nova")) == {"central"}
    assert sites.sites_of(volume("e1@ceph-edge#rbd")) == {"edge"}


def test_unmapped_demand_empty_counts_nowhere() -> None:
    sites = central_edge(unmapped=[])
    assert sites.sites_of(volume("x@lvm#lvm")) == frozenset()
    assert sites.sites_of(SENT) == frozenset()


def test_without_patterns_every_event_counts_everywhere_as_before() -> None:
    sites = SiteMap([SiteConfig("central"), SiteConfig("edge")])
    for ev in (volume("c1@ceph-central#rbd", "az-central"), cache("hit", "e1@ceph-edge#r"),
               SENT):
        assert sites.sites_of(ev) == {"central", "edge"}


def test_events_that_are_not_demand_count_nowhere() -> None:
    ev = events.ImageDeleted(IMAGE_ID, T0)
    assert central_edge().sites_of(ev) == frozenset()


def test_several_targets_can_match_one_backend() -> None:
    sites = SiteMap([SiteConfig("edge-a", backends=("ceph-edge*",)),
                     SiteConfig("edge-b", backends=("ceph-edge-b",)),
                     SiteConfig("central", backends=("ceph-central",))])
    assert sites.sites_of(volume("e@ceph-edge-b#rbd")) == {"edge-a", "edge-b"}
    assert sites.sites_of(volume("e@ceph-edge-a#rbd")) == {"edge-a"}


@pytest.mark.parametrize("pattern,host,match", [
    # without '@': the backend name alone
    ("ceph-edge", "e1@ceph-edge#rbd", True),
    ("ceph-edge", "ceph-edge", False),            # a bare host names no backend
    ("ceph-edge", "ceph-edge@other#ceph-edge", False),
    ("ceph-?dge", "e1@ceph-edge#rbd", True),
    ("ceph-[ef]dge", "e1@ceph-fdge#rbd", True),
    ("ceph-*", "e1@ceph-edge#rbd", True),
    ("Ceph-Edge", "e1@ceph-edge#rbd", False),     # case-sensitive
    ("ceph", "e1@ceph-edge#rbd", False),          # whole backend name, not a prefix
    ("*", "e1@b#p", True),
    ("*", "e1", False),
    # with '@' but no '#': host@backend
    ("*@ceph-edge", "e1@ceph-edge#rbd", True),
    ("e1@*", "e1@ceph-edge#rbd", True),
    ("e2@*", "e1@ceph-edge#rbd", False),
    ("*@ceph-edge", "e1@ceph-edge", True),        # no pool
    # with both: the whole string
    ("*@ceph-edge#rbd", "e1@ceph-edge#rbd", True),
    ("*@ceph-edge#ssd", "e1@ceph-edge#rbd", False),
    ("*@*#LVM *", "h@lvm#LVM iSCSI", True),
])
def test_backend_patterns(pattern: str, host: str, match: bool) -> None:
    sites = SiteMap([SiteConfig("t", backends=(pattern,))], unmapped=[])
    assert sites.sites_of_host(host) == (frozenset({"t"}) if match else frozenset())


@pytest.mark.parametrize("pattern,host,match", [
    ("e1", "e1@ceph-edge#rbd", True),
    ("edge*", "edge7.example.org@b#p", True),
    ("edge*", "central1@b#edge", False),
    ("e1", "e1", True),          # a bare host
    ("e1", "e1#pool", True),
    ("E1", "e1@b#p", False),
])
def test_host_patterns(pattern: str, host: str, match: bool) -> None:
    sites = SiteMap([SiteConfig("t", hosts=(pattern,))], unmapped=[])
    assert sites.sites_of_host(host) == (frozenset({"t"}) if match else frozenset())


def test_zone_patterns_are_fnmatch_and_case_sensitive() -> None:
    sites = SiteMap([SiteConfig("edge", zones=("edge-*",))], unmapped=[])
    assert sites.sites_of_host(None, "edge-7") == {"edge"}
    assert sites.sites_of_host(None, "Edge-7") == frozenset()
    assert sites.sites_of_host(None, "central") == frozenset()


def test_cache_events_have_no_zone() -> None:
    sites = SiteMap([SiteConfig("edge", zones=("*",))], unmapped=[])
    assert sites.sites_of(cache("hit", "e1@ceph-edge#rbd")) == frozenset()


def test_wanted_anywhere_targets() -> None:
    sites = SiteMap([SiteConfig("central", wanted_anywhere=True), EDGE])
    assert sites.wanted_anywhere_targets() == {"central"}
    assert central_edge().wanted_anywhere_targets() == frozenset()


HOSTILE_HOSTS = ["", "@", "#", "@#", "#@", "@@@", "###", "a@b@c#d#e", "*", "[", "[!]",
                 "\\", "h@" + "b" * 10_000, "h@b#\x00", "h\n@b", "(?:x)", ".*", "ü@ß#ç",
                 "h@ceph-edge", "@ceph-edge#", "ceph-edge#x@y"]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_host_strings_never_raise(host: str) -> None:
    sites = SiteMap([SiteConfig("edge", backends=("ceph-edge",), hosts=("h*",)),
                     SiteConfig("central", backends=("*@*#*",))])
    found = sites.sites_of_host(host, host)
    assert found <= {"edge", "central"} and found


def test_regex_characters_in_hosts_are_literal() -> None:
    sites = SiteMap([SiteConfig("t", backends=("b.d",))], unmapped=[])
    assert sites.sites_of_host("h@b.d#p") == {"t"}
    assert sites.sites_of_host("h@bxd#p") == frozenset()


@given(host=st.text(max_size=80), zone=st.none() | st.text(max_size=40))
def test_any_host_maps_to_known_targets_or_unmapped(host: str, zone: str | None) -> None:
    sites = SiteMap([CENTRAL, EDGE, SiteConfig("far", hosts=("far*",), zones=("?",))],
                    unmapped=["central"])
    found = sites.sites_of_host(host, zone)
    assert found and found <= {"central", "edge", "far"}
    assert sites.sites_of_host(host, zone) == found  # the cache gives the same answer


def test_matching_is_done_once_per_host_string(monkeypatch: pytest.MonkeyPatch) -> None:
    from warmer import sites as sites_mod
    calls: list[str] = []
    split = sites_mod._split

    def counting(value: str) -> Any:
        calls.append(value)
        return split(value)

    monkeypatch.setattr(sites_mod, "_split", counting)
    sites = central_edge()
    for _ in range(1000):
        sites.sites_of(volume("e1@ceph-edge#rbd", "az-edge"))
    assert calls == ["e1@ceph-edge#rbd"]


def test_the_cache_is_bounded() -> None:
    sites = central_edge(cache_size=8)
    for n in range(100):
        assert sites.sites_of_host(f"h{n}@ceph-edge#p", f"z{n}") == {"edge"}
    assert len(sites._by_host) <= 8 and len(sites._by_zone) <= 8


@pytest.mark.parametrize("site,match", [
    (SiteConfig("edge", backends=("",)), r"\[edge\] demand_backends.*empty"),
    (SiteConfig("edge", backends=("  ",)), r"\[edge\] demand_backends.*empty"),
    (SiteConfig("edge", hosts=("",)), r"\[edge\] demand_hosts.*empty"),
    (SiteConfig("edge", zones=("",)), r"\[edge\] demand_zones.*empty"),
    (SiteConfig("edge", backends=("ceph#rbd",)), r"demand_backends.*'\*@backend#pool'"),
    (SiteConfig("edge", hosts=("h@b",)), r"demand_hosts.*use demand_backends"),
    (SiteConfig("edge", hosts=("h#p",)), r"demand_hosts"),
    (SiteConfig("edge", zones=("az\n",)), r"demand_zones.*control characters"),
])
def test_patterns_that_can_never_match_are_refused(site: SiteConfig, match: str) -> None:
    with pytest.raises(SiteConfigError, match=match):
        SiteMap([site, CENTRAL])


@pytest.mark.parametrize("unmapped,match", [
    (["nowhere"], r"\[warming\] unmapped_demand names 'nowhere'.*central, edge"),
    (["central", "Edge"], r"unmapped_demand names 'Edge'"),
    (["*", "edge"], r"unmapped_demand: '\*'.*cannot be combined"),
])
def test_bad_unmapped_demand_is_refused(unmapped: list[str], match: str) -> None:
    with pytest.raises(SiteConfigError, match=match):
        central_edge(unmapped=unmapped)


def test_duplicate_target_names_are_refused() -> None:
    with pytest.raises(SiteConfigError, match="named twice: edge"):
        SiteMap([EDGE, EDGE])


CONF = """
[DEFAULT]
enabled_targets = central,edge

[warming]
unmapped_demand = {unmapped}

[central]
demand_backends = ceph-central
demand_zones = az-central
wanted_anywhere = true

[edge]
demand_backends = ceph-edge, *@edge-*#ssd
demand_hosts = {edge_hosts}
demand_zones = az-edge
"""


def load(tmp_path: Path, unmapped: str = "central", edge_hosts: str = "edge*") -> Any:
    path = tmp_path / "warmer.conf"
    path.write_text(CONF.format(unmapped=unmapped, edge_hosts=edge_hosts))
    return warmer_conf.load(["--config-file", str(path)])


def test_from_conf(tmp_path: Path) -> None:
    conf = load(tmp_path)
    assert conf.edge.demand_backends == ["ceph-edge", "*@edge-*#ssd"]
    sites = SiteMap.from_conf(conf)
    assert sites.targets == ("central", "edge")
    assert sites.unmapped == {"central"}
    assert sites.wanted_anywhere_targets() == {"central"}
    assert sites.sites_of(volume("x@edge-3#ssd")) == {"edge"}
    assert sites.sites_of(volume("edge9@lvm#x")) == {"edge"}
    assert sites.sites_of(volume("x@lvm#x", "nova")) == {"central"}


def test_defaults_map_everything_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "warmer.conf"
    path.write_text("[DEFAULT]\nenabled_targets = central,edge\n")
    conf = warmer_conf.load(["--config-file", str(path)])
    assert conf.warming.unmapped_demand is None
    assert conf.edge.demand_backends == [] and conf.edge.wanted_anywhere is False
    sites = SiteMap.from_conf(conf)
    assert sites.sites_of(volume("e1@ceph-edge#rbd", "az-edge")) == {"central", "edge"}
    assert sites.counts_everywhere and not sites.has_patterns


def test_with_patterns_unmapped_demand_defaults_to_the_targets_without_any(tmp_path: Path) -> None:
    """A Glance download (image.send) says nothing of its site: with sites
    configured and unmapped_demand left unset, it must not make every
    target want the image (one volume at edge-a, through Cinder's download
    path, would copy it into every edge); it goes to the targets that say
    nothing of where their demand comes from."""
    path = tmp_path / "warmer.conf"
    path.write_text("[DEFAULT]\nenabled_targets = central,edge\n"
                    "[edge]\ndemand_backends = ceph-edge\n")
    sites = SiteMap.from_conf(warmer_conf.load(["--config-file", str(path)]))
    # Central says nothing of where its demand comes from: it takes what
    # maps nowhere (patterns are added one site at a time).
    assert sites.unmapped == {"central"} and not sites.counts_everywhere
    assert sites.sites_of(SENT) == {"central"}
    assert sites.sites_of(volume("ctl1@ceph-central#volumes")) == {"central"}
    assert sites.sites_of(volume("e1@ceph-edge#rbd")) == {"edge"}
    path.write_text("[DEFAULT]\nenabled_targets = central,edge\n"
                    "[central]\ndemand_backends = ceph-central\n"
                    "[edge]\ndemand_backends = ceph-edge\n")
    sites = SiteMap.from_conf(warmer_conf.load(["--config-file", str(path)]))
    assert sites.unmapped == frozenset()  # every target has patterns: nowhere
    assert sites.sites_of(SENT) == frozenset()
    assert sites.sites_of(volume("x@lvm#lvm")) == frozenset()


def test_load_refuses_an_unknown_unmapped_target(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match=r"\[warming\] unmapped_demand names 'edg'"):
        load(tmp_path, unmapped="edg")


def test_load_refuses_an_empty_pattern(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match=r"\[edge\] demand_hosts.*empty"):
        load(tmp_path, edge_hosts="edge*,,x")


WORKED_EXAMPLE = """
[DEFAULT]
enabled_targets = central,edge_a,edge_b

[warming]
unmapped_demand = central

[central]
demand_backends = ceph-central
demand_zones = az-central
wanted_anywhere = true

[edge_a]
demand_backends = ceph-edge
demand_zones = az-edge-a

[edge_b]
demand_backends = *@ceph-edge-b#*
demand_zones = az-edge-b
"""


def test_the_worked_example_of_docs_sites_md(tmp_path: Path) -> None:
    path = tmp_path / "warmer.conf"
    path.write_text(WORKED_EXAMPLE)
    sites = SiteMap.from_conf(warmer_conf.load(["--config-file", str(path)]))
    assert sites.wanted_anywhere_targets() == {"central"}
    table = [
        (volume("ctl2@ceph-central#ceph-central", "az-central"), {"central"}),
        (volume("edge-a1@ceph-edge#ceph-edge", "az-edge-a"), {"edge_a"}),
        (volume(None, publisher_id="volume.edge-b1@ceph-edge-b#rbd"), {"edge_b"}),
        (cache("miss", "edge-a1@ceph-edge#ceph-edge"), {"edge_a"}),
        (volume("ctl1@lvm#lvm", "az-edge-b"), {"edge_b"}),
        (volume("ctl1@lvm#lvm", "nova"), {"central"}),
        (SENT, {"central"}),
    ]
    for event, expected in table:
        assert sites.sites_of(event) == expected, event
    assert sites.sites_of_host("x@ceph-edge-b#p") == {"edge_b"}  # not edge_a
