"""The cloud-init user-data that turns a fresh VM into a Sky Port node.

One bash script per node (cloud-init runs a user-data that starts with
``#!`` as a script on first boot).  It

1. makes the node's folder (``$SKYPORT_NODE_ROOT``, default
   ``/var/lib/skyport``; 0700),
2. installs Sky Port unless ``$SKYPORT_PYTHON`` (default ``python3``)
   imports exactly the control plane's version (``install_command``, by
   default ``pip install skyport==<that version>``: a pinned requirement,
   never whatever the index serves today),
3. writes the agent's bootstrap file (control URL, CA PEM, job token, node
   rank and name, cores: see ``skyport.agent.bootstrap``) with umask 077,
4. replaces itself with the agent, which reads and removes that file.

What it carries: the job's own token (valid for that one job) and the
public CA certificate.  What it never carries: cloud credentials; nothing of
the gate's config but the install command goes in.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict

from skyport import __version__
from skyport.agent.bootstrap import Bootstrap

__all__ = ["BOOTSTRAP_NAME", "DEFAULT_INSTALL", "render_userdata"]

BOOTSTRAP_NAME = ".skyport-bootstrap.json"
DEFAULT_INSTALL = f'"$PY" -m pip install --no-input "skyport=={__version__}"'
"""The control plane's own version, pinned: a node never runs another Sky Port."""
_EOF = "SKYPORT_BOOTSTRAP_EOF"

_TEMPLATE = """\
#!/bin/bash
# Sky Port node {node_name} (job {job_id}, cluster {cluster_id})
set -eu
umask 077
PY="${{SKYPORT_PYTHON:-python3}}"
NODE_DIR="${{SKYPORT_NODE_ROOT:-/var/lib/skyport}}/{node_name_q}"
mkdir -p "$NODE_DIR"
cd "$NODE_DIR"
if ! "$PY" -c 'import sys, skyport.agent, skyport; sys.exit(skyport.__version__ != "{version}")' \
    >/dev/null 2>&1; then
  echo "skyport: installing Sky Port {version}" >&2
  {install_command}
fi
"$PY" -c 'import sys, skyport; sys.exit(skyport.__version__ != "{version}")' || {{
  echo "skyport: this node's Sky Port is not {version}, the control plane's" >&2; exit 1; }}
cat > "$NODE_DIR/{bootstrap}.tmp" <<'{eof}'
{bootstrap_json}
{eof}
"$PY" - "$NODE_DIR/{bootstrap}.tmp" "$NODE_DIR" <<'SKYPORT_FIX_EOF'
import json, sys
path, workdir = sys.argv[1], sys.argv[2]
with open(path) as f:
    boot = json.load(f)
boot["workdir"] = workdir
with open(path, "w") as f:
    json.dump(boot, f)
SKYPORT_FIX_EOF
mv "$NODE_DIR/{bootstrap}.tmp" "$NODE_DIR/{bootstrap}"
exec "$PY" -m skyport.agent --bootstrap "$NODE_DIR/{bootstrap}" >>"$NODE_DIR/agent.out" 2>&1
"""


def render_userdata(boot: Bootstrap, install_command: str = DEFAULT_INSTALL) -> str:
    """The user-data script for one node; ``boot.workdir`` is filled in on the node."""
    text = json.dumps(asdict(boot), indent=1)
    if _EOF in text:  # cannot happen with JSON of ids and a PEM, but never emit a broken script
        raise ValueError("bootstrap text contains the here-document delimiter")
    return _TEMPLATE.format(
        node_name=_comment(boot.node_name), job_id=_comment(boot.job_id),
        cluster_id=_comment(boot.cluster_id), node_name_q=_path_part(boot.node_name),
        install_command=install_command, bootstrap=BOOTSTRAP_NAME, eof=_EOF,
        version=__version__,
        bootstrap_json=text)


def _comment(value: str) -> str:
    return value.replace("\n", " ")


def _path_part(value: str) -> str:
    """A node name as one quoted-safe path component."""
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"node name {value!r} cannot be a folder name")
    quoted = shlex.quote(value)
    if quoted != value:  # keep the template simple: names are [A-Za-z0-9_.-]
        raise ValueError(f"node name {value!r} must be letters, digits, '_', '.', '-'")
    return value
