"""What ``warmer doctor`` found: diagnoses, verdicts, and how they print.

A :class:`Diagnosis` is one finding: a stable ``code`` (for scripts and the
docs), a ``message`` that names the thing at fault, one ``remedy`` line, and
whether it is ``blocking``. A blocking diagnosis on an image and target
means Cinder's ``clone_image`` will not clone there (it downloads instead,
or, for an unprotected snapshot under clone v1, fails the volume); on the
deployment it means warmer cannot make images cloneable in that target.
An ``unsafe`` diagnosis is a breach of one of warmer's invariants (its
user may write Cinder's pool: invariant 7): it makes the exit status 1
whether or not an image is given, since it is wrong even where every
image clones. Everything else is a warning or a note, and never changes
the exit code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Diagnosis:
    code: str
    message: str
    remedy: str | None = None
    blocking: bool = False
    unsafe: bool = False

    @property
    def level(self) -> str:
        if self.unsafe:
            return "UNSAFE"
        if self.blocking:
            return "BLOCKING"
        return "warning" if self.remedy else "ok"


@dataclass
class Verdict:
    """One image in one target: does Cinder's ``clone_image`` clone, from
    which location, and why (not)."""

    target: str
    clones: bool
    location: str | None = None
    diagnoses: list[Diagnosis] = field(default_factory=list)
    # False: the doctor could not look (the target's cluster was out of
    # reach); counted as not cloning, since nothing shows that it does.
    checked: bool = True


@dataclass
class ImageReport:
    image_id: str
    summary: str = ""
    diagnoses: list[Diagnosis] = field(default_factory=list)  # about the image as a whole
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return any(not v.clones for v in self.verdicts) or any(
            d.blocking for d in self.diagnoses)


@dataclass
class Report:
    # Per scope ("glance", "cinder", or a target's name): the deployment.
    deployment: dict[str, list[Diagnosis]] = field(default_factory=dict)
    image: ImageReport | None = None

    def add(self, scope: str, diagnosis: Diagnosis) -> None:
        self.deployment.setdefault(scope, []).append(diagnosis)

    @property
    def blocked(self) -> bool:
        """Exit non-zero: with an image, when it does not clone in some
        target; without, when the deployment keeps warmer from warming;
        either way, when the deployment is unsafe."""
        if self.unsafe:
            return True
        if self.image is not None:
            return self.image.blocked
        return any(d.blocking for ds in self.deployment.values() for d in ds)

    @property
    def unsafe(self) -> bool:
        return any(d.unsafe for ds in self.deployment.values() for d in ds)

    def as_json(self) -> dict[str, Any]:
        return {
            "blocked": self.blocked,
            "unsafe": self.unsafe,
            "deployment": {scope: [dataclasses.asdict(d) for d in ds]
                           for scope, ds in self.deployment.items()},
            "image": None if self.image is None else {
                "id": self.image.image_id,
                "summary": self.image.summary,
                "diagnoses": [dataclasses.asdict(d) for d in self.image.diagnoses],
                "targets": [{"target": v.target, "clones": v.clones, "checked": v.checked,
                             "location": v.location,
                             "diagnoses": [dataclasses.asdict(d) for d in v.diagnoses]}
                            for v in self.image.verdicts],
            },
        }

    def lines(self) -> list[str]:
        out = ["deployment:"]
        for scope, diagnoses in self.deployment.items():
            out.append(f"  {scope}:")
            out += _diagnosis_lines(diagnoses, "    ")
        if self.image is not None:
            img = self.image
            out.append(f"image {img.image_id}: {img.summary}")
            out += _diagnosis_lines(img.diagnoses, "  ")
            for v in img.verdicts:
                head = (f"CLONES from {v.location}" if v.clones
                        else "DOES NOT CLONE" if v.checked else "NOT CHECKED")
                out.append(f"  {v.target}: {head}")
                out += _diagnosis_lines(v.diagnoses, "    ")
        return out


def _diagnosis_lines(diagnoses: list[Diagnosis], indent: str) -> list[str]:
    out = []
    for d in diagnoses:
        out.append(f"{indent}[{d.level}] {d.code}: {d.message}")
        if d.remedy:
            out.append(f"{indent}    remedy: {d.remedy}")
    return out
