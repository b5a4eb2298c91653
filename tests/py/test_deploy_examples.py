"""The shipped deployment examples are valid: `deploy/ringmux.service` passes
`systemd-analyze verify` (with its two paths pointed at files that exist
here), and its ExecStart is a command line ringmux accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

from conftest import REPO, RINGMUX_BIN

UNIT = REPO / "deploy" / "ringmux.service"


def local_unit(tmp_path):
    text = UNIT.read_text()
    text = text.replace("/usr/local/bin/ringmux", str(RINGMUX_BIN))
    text = text.replace("/opt/tools/venv/bin/python", sys.executable)
    out = tmp_path / "ringmux.service"
    out.write_text(text)
    return out, text


def test_the_systemd_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed to check deploy/ringmux.service (Debian: systemd)"
    unit, _ = local_unit(tmp_path)
    p = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, printing a warning:
    # a clean unit prints nothing.
    assert p.returncode == 0 and (p.stdout + p.stderr).strip() == "", p.stdout + p.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Delegate=yes", "Delegatx=yes"))
    p = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Delegatx'" in p.stdout + p.stderr, "verify missed a typo: the check is blind"


def test_the_units_command_line_is_one_ringmux_accepts(tmp_path):
    _, text = local_unit(tmp_path)
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert "Delegate=yes" in text and "--cgroup" in argv
    # --help after the options: clap parses them all, then prints help.
    serve = argv[: argv.index("--")]
    p = subprocess.run(serve + ["--help"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
