"""Compare conformance results of the fixture served directly vs. through ringmux.

Usage:
  compare.py --scenarios LIST_OUTPUT --allow EXPECTED_DIFFERENCES \
             --target direct=DIR --target ringmux-key=DIR [--target ...]

The first --target is the reference (the fixture served directly). Each DIR holds what
`conformance server --suite all -o DIR` wrote (one `server-<scenario>-<timestamp>/checks.json`
per scenario) plus, for the extra checks of scripts/conformance.sh, files
`extra-<name>.rc` holding an exit code.

A scenario passes when it produced checks and none of them has status FAILURE (that is
the suite's own rule; WARNING and INFO do not fail it). Exit status: 1 if any scenario
(or extra check) passes on the reference target but not on another target, unless the
scenario is listed in the allow-list file (one per line: `<scenario> <reason...>`;
blank lines and lines starting with `#` are ignored); 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TIMESTAMP = re.compile(r"-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d{3}Z$")


def load_target(directory: Path) -> dict[str, dict]:
    """scenario -> {"status": "pass"|"FAIL"|..., "failed": n, "warnings": n, "failures": [...]}."""
    out: dict[str, dict] = {}
    for checks_file in sorted(directory.glob("server-*/checks.json")):
        name = TIMESTAMP.sub("", checks_file.parent.name)[len("server-") :]
        try:
            checks = json.loads(checks_file.read_text())
        except (OSError, ValueError) as exc:
            out[name] = {"status": "BROKEN", "failed": 1, "warnings": 0, "failures": [f"unreadable checks.json: {exc}"]}
            continue
        failed = [c for c in checks if c.get("status") == "FAILURE"]
        warnings = [c for c in checks if c.get("status") == "WARNING"]
        if not checks:
            status = "EMPTY"
        elif failed:
            status = f"FAIL({len(failed)})"
        else:
            status = "pass"
        out[name] = {
            "status": status,
            "failed": len(failed),
            "warnings": len(warnings),
            "failures": [f"{c.get('id')}: {c.get('errorMessage') or c.get('description')}" for c in failed],
            "warning_ids": sorted(c.get("id", "?") for c in warnings),
        }
    for rc_file in sorted(directory.glob("extra-*.rc")):
        name = "extra:" + rc_file.name[len("extra-") : -len(".rc")]
        rc = rc_file.read_text().strip()
        ok = rc == "0"
        out[name] = {
            "status": "pass" if ok else f"FAIL(rc={rc})",
            "failed": 0 if ok else 1,
            "warnings": 0,
            "failures": [] if ok else [f"exit code {rc}; see extra-{name[6:]}.log"],
            "warning_ids": [],
        }
    return out


def parse_scenarios(list_output: Path) -> list[str]:
    names, in_server = [], False
    for line in list_output.read_text().splitlines():
        if line.startswith("Server scenarios"):
            in_server = True
        elif line and not line.startswith(" "):
            in_server = False
        elif in_server:
            m = re.match(r"\s*-\s+(\S+)", line)
            if m:
                names.append(m.group(1))
    return names


def parse_allow(path: Path) -> dict[str, str]:
    allow: dict[str, str] = {}
    if path.exists():
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition(" ")
            allow[name] = reason.strip() or "(no reason given)"
    return allow


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", type=Path, required=True)
    ap.add_argument("--allow", type=Path, required=True)
    ap.add_argument("--target", action="append", required=True, help="NAME=DIR; the first is the reference")
    args = ap.parse_args()

    targets = [(t.split("=", 1)[0], Path(t.split("=", 1)[1])) for t in args.target]
    results = {name: load_target(d) for name, d in targets}
    ref_name = targets[0][0]
    allow = parse_allow(args.allow)

    scenarios = parse_scenarios(args.scenarios)
    extras = sorted({s for r in results.values() for s in r if s.startswith("extra:")})
    unknown = sorted({s for r in results.values() for s in r} - set(scenarios) - set(extras))
    rows = scenarios + unknown + extras

    def cell(target: str, scenario: str) -> str:
        r = results[target].get(scenario)
        if r is None:
            return "MISSING"
        return r["status"] + (f" w{r['warnings']}" if r["warnings"] else "")

    width = max(len(s) for s in rows) + 2
    colw = max(14, *(len(n) + 2 for n, _ in targets))
    header = "scenario".ljust(width) + "".join(n.ljust(colw) for n, _ in targets) + "note"
    print(header)
    print("-" * len(header))

    regressions: list[tuple[str, str]] = []
    allowed_seen: set[str] = set()
    direct_failures: list[str] = []
    for s in rows:
        ref = results[ref_name].get(s)
        ref_pass = ref is not None and ref["status"] == "pass"
        if not ref_pass:
            direct_failures.append(s)
        notes = []
        for name, _ in targets[1:]:
            other = results[name].get(s)
            other_pass = other is not None and other["status"] == "pass"
            if ref_pass and not other_pass:
                if s in allow:
                    allowed_seen.add(s)
                    notes.append(f"{name}: allowed ({allow[s]})")
                else:
                    regressions.append((s, name))
                    notes.append(f"{name}: REGRESSION")
            elif ref_pass and other is not None and other.get("warning_ids") != ref.get("warning_ids"):
                notes.append(f"{name}: warnings differ {ref.get('warning_ids')} vs {other.get('warning_ids')}")
        print(s.ljust(width) + "".join(cell(n, s).ljust(colw) for n, _ in targets) + "; ".join(notes))

    print("(pass/FAIL(n): the suite's rule, a scenario fails on any FAILURE check; wN: N WARNING checks;"
          " extra:*: scripts/conformance.sh's own checks)")
    print()
    total = len(rows)
    for name, _ in targets:
        n_pass = sum(1 for s in rows if results[name].get(s, {}).get("status") == "pass")
        print(f"{name}: {n_pass}/{total} pass")
    if direct_failures:
        print(f"\nnot passing on {ref_name} (fixture or suite gaps, not gated): {', '.join(direct_failures)}")
        for s in direct_failures:
            for f in (results[ref_name].get(s) or {"failures": ["no result"]})["failures"]:
                print(f"  {s}: {f}")
    for s in sorted(set(allow) - allowed_seen):
        print(f"\nnote: allow-list entry '{s}' did not differ in this run (stale?)")
    if regressions:
        print("\nREGRESSIONS (pass on " + ref_name + ", not through ringmux):")
        for s, name in regressions:
            r = results[name].get(s)
            print(f"  {s} [{name}]: " + ("; ".join(r["failures"]) if r else "no result (scenario did not run or crashed)"))
        return 1
    print(f"\nno regressions: every scenario that passes on {ref_name} passes on " + ", ".join(n for n, _ in targets[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
