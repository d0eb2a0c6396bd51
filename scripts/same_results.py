"""Check that a refactor changed shape, not results.

Two JSON outputs (e.g. two runs' comparison.json of the default study) must hold the same numbers,
timings, paths and versions aside.

    python scripts/same_results.py BEFORE/comparison.json AFTER/comparison.json
    python scripts/same_results.py --allow-new BEFORE/comparison.json AFTER/comparison.json

Prints how many values are equal and lists every difference; exits 1 if any number differs. With
--allow-new, keys that only AFTER has (a format that gained fields) are counted and listed apart, not
as differences; every key of BEFORE must still be in AFTER with the same value.
"""

import json
import math
import sys

# keys whose values legitimately differ between two runs of the same study
SKIPPED = ("seconds", "time", "path", "version", "source", "probe", "out", "folder", "dir", "created")


NEW = "<new in AFTER>"


def differences(before, after, where=""):
    """(count of equal values, [(where, before, after)] for every value that differs or is new)."""
    equal = 0
    if any(word in where.rsplit("/", 1)[-1].lower() for word in SKIPPED):
        return equal, []
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key not in before:
                found.append((f"{where}/{key}", NEW, "…"))
                continue
            if key not in after:
                found.append((f"{where}/{key}", before[key], "<absent>"))
                continue
            n, more = differences(before[key], after[key], f"{where}/{key}")
            equal, found = equal + n, found + more
        return equal, found
    if isinstance(before, list) and isinstance(after, list):
        found = [] if len(before) == len(after) else [(where, f"{len(before)} items", f"{len(after)} items")]
        for i, (a, b) in enumerate(zip(before, after)):
            n, more = differences(a, b, f"{where}[{i}]")
            equal, found = equal + n, found + more
        return equal, found
    both_nan = isinstance(before, float) and isinstance(after, float) and math.isnan(before) and math.isnan(after)
    if before == after or both_nan:
        return 1, []
    return 0, [(where, before, after)]


def main(argv):
    """Compare the two files named in ``argv``; exit status 1 when they differ."""
    allow_new = "--allow-new" in argv
    argv = [a for a in argv if a != "--allow-new"]
    if len(argv) != 2:
        sys.exit(__doc__)
    with open(argv[0], encoding="utf-8") as a, open(argv[1], encoding="utf-8") as b:
        equal, found = differences(json.load(a), json.load(b))
    new = [f for f in found if f[1] is NEW]
    if allow_new:
        found = [f for f in found if f[1] is not NEW]
        print(f"{len(new)} keys new in AFTER (allowed): {', '.join(sorted({w.rsplit('/', 1)[-1] for w, _, _ in new}))}")
    print(f"{equal} values equal, {len(found)} differ")
    for where, a, b in found:
        print(f"  {where}: {a!r} -> {b!r}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
