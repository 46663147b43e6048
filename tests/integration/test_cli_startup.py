"""What a `skyport` command loads before it does anything: the client, never more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skyport import pki
from skyport.config import StateDir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# heavy packages a command never needs: Ray (the control plane's), FastAPI (the server's),
# and httpx's own command line (rich, pygments), which httpx imports unless it cannot
NEVER = ("ray", "fastapi", "uvicorn", "rich", "pygments")


@pytest.mark.parametrize("module", ["skyport.cli", "skyport"])
def test_importing_the_cli_loads_nothing_heavy(module: str) -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True)
    loaded = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert module in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in NEVER)
    assert heavy == [], heavy


def test_httpx_still_works_after_its_command_line_is_left_out() -> None:
    code = ("import skyport, httpx; "
            "r = httpx.Client(transport=httpx.MockTransport(lambda q: httpx.Response(204)))"
            ".get('https://x.test'); print(r.status_code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "204"


def test_connecting_loads_no_server_stack(tmp_path: Path) -> None:
    """A command's client context needs the standard library's ssl only, not uvicorn."""
    state = StateDir(tmp_path / "home")
    state.pki.mkdir(parents=True)
    state.run.mkdir(parents=True)
    pki.init_ca(state.pki)
    pki.issue_user_cert(state.pki, "admin", role="admin")
    state.address_path.write_text(json.dumps({"url": "https://127.0.0.1:9"}))
    code = ("import sys, skyport.client as c; c.connect(sys.argv[1], 'admin'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[2:])))")
    out = subprocess.run([sys.executable, "-c", code, str(state.root), *NEVER, "cryptography"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_command_imports_its_own_module_only() -> None:
    """`skyport submit` loads the jobs commands, not the relay's or the admin's."""
    code = ("import sys; from click import Context; from skyport.cli import cli; "
            "cli.get_command(Context(cli), 'submit'); "
            "print(sorted(m for m in sys.modules if m.startswith('skyport.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "skyport.cli.jobs" in out
    assert "skyport.cli.relay" not in out and "skyport.cli.admin" not in out, out
