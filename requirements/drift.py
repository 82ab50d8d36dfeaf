"""What `make test-latest` installed that differs from the lock of the tested set.

Reads ``pip freeze`` lines (``name==version``) on stdin and compares them with the lock file named as the first
argument, whose markers are evaluated for this interpreter. Prints one line per package that differs (newer,
older, not in the lock, locked but missing) so a failure of the newest set can be traced to the package that
moved. Exit status 0 always: drift is information; the tests that follow decide.
"""
from __future__ import annotations

import re
import sys

from packaging.markers import Marker
from packaging.utils import canonicalize_name

LINE = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


TOOLS = {"pip", "uv", "setuptools", "wheel"}  # the environment's installers, not dependencies


def locked(path: str) -> dict[str, str]:
    """Package -> version of the lock's entries whose marker holds on this interpreter."""
    versions = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = LINE.match(line.strip())
            if not match:
                continue
            name, version, marker = match.groups()
            if marker is None or Marker(marker).evaluate():
                versions[canonicalize_name(name)] = version
    return versions


def installed(lines) -> dict[str, str]:
    versions = {}
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if sep:
            versions[canonicalize_name(name)] = version
    return versions


def main() -> None:
    lock = locked(sys.argv[1])
    now = installed(sys.stdin)
    rows = []
    for name in sorted((set(lock) | set(now)) - TOOLS):
        old, new = lock.get(name), now.get(name)
        if old != new:
            rows.append(f"  {name}: locked {old or '-'}, newest {new or '-'}")
    print(f"drift from {sys.argv[1]}: {len(rows)} package(s)" + (":" if rows else " (the newest set is the lock's)"))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
