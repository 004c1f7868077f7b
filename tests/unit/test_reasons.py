"""Every state and reason is in warmer/reasons.py, with its meaning and
remedy, and the README's and the operations guide's lists agree with it."""

from __future__ import annotations

import pathlib
import re

from warmer.reasons import GOOD, Reason, State

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = re.compile(r"`([a-z0-9]+(?:_[a-z0-9]+)*)`")
# A reason written as a literal where the code reports one: a TargetResult's
# state and reason, a CopyError's, a TargetProblem's or a SnapshotCheck's reason.
LITERALS = re.compile(r'(?:TargetResult\("(\w+)", "(\w+)"'
                      r'|(?:CopyError|TargetProblem|SnapshotCheck)\("(\w+)")')
# Config options the alerts' sections name besides states and reasons.
OPTIONS = {"retry_delay", "glance_store"}


def test_every_reason_has_a_meaning_and_a_remedy() -> None:
    for reason in Reason:
        assert reason.meaning.strip() and reason.remedy.strip(), reason
    for state in State:
        assert state.meaning.strip(), state


def test_members_are_their_old_strings() -> None:
    assert State.NOT_WANTED == "not_wanted" and f"{State.WARM}" == "warm"
    assert str(Reason.OVER_BUDGET) == "over_budget"
    assert {"warm": 1}[State.WARM] == 1


def test_the_readme_lists_every_reason_an_image_is_not_warm() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("Reasons an image is not warm")
    paragraph = text[start:text.index("\n\n", start)]
    named = set(NAME.findall(paragraph)) - {"detail"}
    assert named == {r.value for r in Reason if r not in GOOD}


def test_the_operations_guide_names_only_known_states_and_reasons() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `warmer_images`"))
    states = re.search(r"`state` \(([^)]*)\)", row)
    assert states is not None
    assert set(NAME.findall(states.group(1))) == {s.value for s in State}
    known = {s.value for s in State} | {r.value for r in Reason} | OPTIONS
    for alert in ("WarmerWarmingFailing", "WarmerCopiesFailing"):
        start = text.index("### " + alert)
        section = text[start:text.index("\n### ", start + 1)]
        names = set(NAME.findall(section))
        assert names - OPTIONS, alert
        assert names <= known, (alert, names - known)


def test_the_code_reports_only_known_reasons() -> None:
    found = set()
    for path in [*(ROOT / "warmer" / "warming").glob("*.py"),
                 *(ROOT / "warmer" / "ceph").glob("*.py")]:
        for match in LITERALS.finditer(path.read_text()):
            state, reason, other = match.groups()
            if state is not None:
                assert state in {s.value for s in State}, (path.name, state)
            found.add(reason or other)
    assert found, "the pattern no longer matches the code"
    assert found <= {r.value for r in Reason}, found - {r.value for r in Reason}
