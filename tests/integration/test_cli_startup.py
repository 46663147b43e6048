"""What a `skyport` command loads before it does anything: the client, never more."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
