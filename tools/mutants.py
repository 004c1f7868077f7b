#!/usr/bin/env python3
"""Break each safety check on purpose and show which unit tests notice.

Each mutation removes or disables one guard that an invariant of DESIGN.md
§6 rests on. For each, the file is changed in place, the unit tests run,
and the file is restored (also on Ctrl-C). A mutation that no test kills is
a hole in the tests. Run from the checkout's root:

    .venv/bin/python tools/mutants.py [NAME ...]

It exits 1 when a mutation survives.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

TARGET, IMAGES, OWNERSHIP = ("warmer/warming/target.py", "warmer/ceph/images.py",
                             "warmer/ceph/ownership.py")
ENGINE, DELETES = "warmer/warming/engine.py", "warmer/warming/deletes.py"
GLANCE = "warmer/glance/client.py"

# name: (file, the guard as written, what replaces it)
MUTATIONS = {
    "finish_without_protect": (IMAGES, "    img.protect_snap(SNAPSHOT)\n", "    pass\n"),
    "remove_owned_ignores_children": (
        IMAGES, "        if children(cluster, pool, image_id):\n"
           "            return \"has_children\"\n", "        pass\n"),
    "remove_temp_no_ownership": (
        IMAGES, "    if found is None or not found.owned:\n        return False\n",
           "    if found is None:\n        return False\n"),
    "remove_owned_no_ownership": (
        IMAGES, "    if not info.owned:\n        return \"not_owned\"\n", ""),
    "no_parent_check": (
        OWNERSHIP, "        elif has_parent:\n            why_not = \"has_parent\"\n", ""),
    "no_registry_check": (
        OWNERSHIP, "_registered(ioctx, image_id) is None:", "False:"),
    "clean_up_ignores_lease": (
        TARGET, "                if not held:\n", "                if False:\n"),
    "evict_ignores_children": (
        TARGET, "        if existing.protected and await self._has_children(pool, image_id):\n"
           "            return \"has_children\"\n", ""),
    "publish_without_check": (TARGET, "        if not _complete(copy_):\n", "        if False:\n"),
    "no_lease_book": (TARGET, "        if key in self._leases:\n            return False\n", ""),
    "evict_with_hidden_locations": (
        TARGET, "                    return \"locations_hidden\"", "                    pass"),
    "delete_without_confirm": (
        ENGINE, "            await self.deletes.confirm_delete(image_id)\n", ""),
    "positive_control_skipped": (
        DELETES, "        if right and not deleted:\n"
                 "            right = await self._a_known_image_answers(image_id)\n", ""),
    "lease_loss_ignored_mid_copy": (
        TARGET, "await asyncio.wait({copying, lost}, return_when=asyncio.FIRST_COMPLETED)",
                "await asyncio.wait({copying})"),
    "repair_anywhere": (TARGET, "and loc.pool == store.pool", ""),
    "evict_after_404": (
        TARGET, "                        return \"glance_404\"\n", "                        pass\n"),  # noqa: E501
    "location_guard_ignored": (
        TARGET, "                    return TargetResult(\"busy\", \"locations_busy\", None)\n",
                "                    pass\n"),
    "location_conflict_ignored": (
        GLANCE, "        if after is not None and (lost or url in after):", "        if False:"),
}


def run_unit_tests() -> tuple[str, list[str]]:
    result = subprocess.run([".venv/bin/python", "-m", "pytest", "-q", "-p",
                             "no:cacheprovider", "tests/unit"], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    failed = [line.split("::", 1)[1].split(" ")[0] for line in lines
              if line.startswith("FAILED")]
    return (lines[-1] if lines else "no output"), failed


def main(names: list[str]) -> int:
    survivors = []
    for name in names or list(MUTATIONS):
        path, guard, replacement = MUTATIONS[name]
        source = pathlib.Path(path)
        original = source.read_text()
        if guard not in original:
            print(f"{name}: the guard is not in {path} as written; update this tool")
            survivors.append(name)
            continue
        source.write_text(original.replace(guard, replacement, 1))
        try:
            summary, failed = run_unit_tests()
        finally:
            source.write_text(original)
        print(f"{name}: {summary}; killed by {failed[:3]}")
        if not failed:
            survivors.append(name)
    if survivors:
        print(f"survived: {survivors}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
