"""``python -m skyport.agent --bootstrap PATH``: start a node agent."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from skyport.agent.bootstrap import Bootstrap, exchange_credential
from skyport.agent.client import AgentClient
from skyport.agent.idle import wait_for_next_job
from skyport.agent.isolation import make_undumpable
from skyport.agent.main import Agent, AgentSettings, install_signal_handlers
from skyport.agent.procfs import set_child_subreaper
from skyport.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyport.agent",
                                     description="Sky Port node agent")
    parser.add_argument("--bootstrap", required=True, type=Path,
                        help="the 0600 JSON file the gate wrote (removed once read)")
    parser.add_argument("--keep-bootstrap", action="store_true",
                        help="do not remove the bootstrap file (debugging)")
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--retry-for-s", type=float, default=600.0,
                        help="how long to keep retrying an unreachable control plane")
    parser.add_argument("--grace-s", type=float, default=5.0,
                        help="SIGTERM-to-SIGKILL grace when killing the payload")
    args = parser.parse_args(argv)
    try:
        boot = Bootstrap.read(args.bootstrap)
    except ConfigError as exc:
        print(f"skyport agent: {exc}", file=sys.stderr)
        return 2
    if not args.keep_bootstrap:
        args.bootstrap.unlink(missing_ok=True)
    try:  # a VM's user-data carries a one-time credential, not the token
        boot = exchange_credential(boot, retry_for_s=args.retry_for_s)
    except ConfigError as exc:
        print(f"skyport agent: {exc}", file=sys.stderr)
        return 2
    workdir = Path(boot.workdir or args.bootstrap.parent)
    workdir.mkdir(parents=True, exist_ok=True)
    boot = Bootstrap(**{**boot.__dict__, "workdir": str(workdir)})
    os.chdir(workdir)
    make_undumpable()  # no process of this user attaches to the agent or reads its token
    os.close(os.open(workdir / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    logging.basicConfig(filename=workdir / "agent.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = AgentSettings(heartbeat_s=args.heartbeat_s, retry_for_s=args.retry_for_s,
                             grace_s=args.grace_s,
                             sweep_session=True)
    try:
        client = AgentClient(boot.control_url, boot.job_id, boot.token, ca_pem=boot.ca_pem,
                             retry_for_s=settings.retry_for_s)
    except ConfigError as exc:
        logging.getLogger("skyport.agent").error("cannot start: %s", exc)
        return 2
    set_child_subreaper()  # orphans of the payload stay ours to find and kill
    while True:  # one job, then (on a warm cluster) the next job of its owner and shape
        with client:
            agent = Agent(boot, client, settings)
            install_signal_handlers(agent)
            rc = agent.run()
        if agent.idle is None:
            return rc
        next_boot = wait_for_next_job(boot, agent.idle, settings.retry_for_s, settings.grace_s)
        if next_boot is None:
            return rc
        boot = next_boot
        client = AgentClient(boot.control_url, boot.job_id, boot.token, ca_pem=boot.ca_pem,
                             retry_for_s=settings.retry_for_s)


if __name__ == "__main__":
    sys.exit(main())
