"""Commands that act on the state directory: init, start, stop, user add/list/revoke, whoami.

``init``, ``start`` and ``stop`` call ``skyport.controlplane`` (imported
lazily, so the other commands never load Ray); ``user add`` calls
``skyport.pki``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

import click

from skyport.cli import render
from skyport.cli.app import Output, cli, command, get_client, state_dir
from skyport.errors import ConfigError, ValidationError


def _controlplane() -> ModuleType:
    try:
        import skyport.controlplane as controlplane
    except ImportError as exc:
        raise ConfigError(f"the control plane cannot be loaded here: {exc}") from exc
    return controlplane


def _show(out: Output, result: Any) -> None:
    data = dict(result) if isinstance(result, dict) else {"result": result}
    out.emit(data, lambda: render.key_values(data.items()))


def _gpu_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    if not text.strip():
        return []
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise ValidationError(
            "--local-gpus", text, "GPU indices separated by commas, e.g. 0,1"
        ) from exc
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValidationError("--local-gpus", text, "distinct GPU indices >= 0")
    return ids


@command(cli, "init")
@click.option("--force", is_flag=True, help="replace an existing configuration")
@click.option(
    "--local-cpus",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="cores the local gate may use",
)
@click.option(
    "--local-gpus", default=None, metavar="0,1", help="GPU indices the local gate may use"
)
@click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="fsspec URL for job files (default: file:// under the state directory)",
)
@click.option("--policy", default=None, metavar="NAME",
              help="scheduling policy (default easy-sjf: EASY backfilling)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="N",
    help="REST API port (default: any free port)",
)
def init_cmd(
    out: Output,
    force: bool,
    local_cpus: int | None,
    local_gpus: str | None,
    storage: str | None,
    policy: str | None,
    port: int | None,
) -> None:
    """Create a state directory: config, certificate authority, admin certificate."""
    options: dict[str, Any] = {"policy": policy} if policy else {}
    result = _controlplane().init_state(
        state_dir(),
        force=force,
        local_cpus=local_cpus,
        local_gpus=_gpu_list(local_gpus),
        storage=storage,
        port=port,
        **options,
    )
    _show(out, result)


@command(cli, "start")
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help="join this Ray cluster instead of starting a local one",
)
@click.option("--foreground", is_flag=True, help="run here until interrupted")
def start_cmd(out: Output, address: str | None, foreground: bool) -> None:
    """Start the control plane (Core, Scheduler, Gates, REST API)."""
    _show(out, _controlplane().start(state_dir(), address=address, foreground=foreground))


@command(cli, "stop")
def stop_cmd(out: Output) -> None:
    """Stop the control plane; jobs and their history are kept."""
    _show(out, _controlplane().stop(state_dir()))


@cli.group("user")
def user_group() -> None:
    """Manage users (certificates from this state directory's CA)."""


@command(user_group, "add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="may see and cancel everyone's jobs")
@click.option("--force", is_flag=True,
              help="re-issue an existing user's certificate (the old one is revoked)")
def user_add_cmd(out: Output, name: str, admin: bool, force: bool) -> None:
    """Issue a certificate for user NAME and register it; prints its paths.

    Needs the CA key (pki/ca.key); ``user list`` and ``user revoke`` do not.
    """
    from skyport.pki import issue_user_cert

    state = state_dir()
    role: Literal["user", "admin"] = "admin" if admin else "user"
    cert, key = issue_user_cert(state.pki, name, role=role, overwrite=force)
    data = {
        "user": name,
        "role": role,
        "cert": str(cert),
        "key": str(key),
        "ca": str(state.pki / "ca.crt"),
    }

    def text() -> str:
        return "\n".join(
            [
                render.key_values(data.items()),
                "",
                "on another machine: SKYPORT_USER, SKYPORT_CERT, SKYPORT_KEY, SKYPORT_CA and "
                "SKYPORT_URL point the client at these files and the control plane",
            ]
        )

    out.emit(data, text)


@command(user_group, "list")
def user_list_cmd(out: Output) -> None:
    """The registered users: role, current certificate serial, revoked or not."""
    from skyport.users import UserRegistry

    users = UserRegistry(state_dir().pki).summary()
    out.emit(users, lambda: render.table(
        ("USER", "ROLE", "SERIAL", "REVOKED", "CHANGED"),
        [(u["name"], u["role"], u["serial"], u["revoked"], u["changed_at"]) for u in users]))


@command(user_group, "revoke")
@click.argument("name")
def user_revoke_cmd(out: Output, name: str) -> None:
    """Revoke user NAME: their certificates answer 401 from the next call on (no restart)."""
    from skyport.users import UserRegistry

    entry = UserRegistry(state_dir().pki).revoke(name)
    data = {"user": entry.name, "revoked": True, "revoked_serials": entry.revoked_serials}
    out.emit(data, lambda: render.key_values(data.items()))


@command(cli, "whoami")
def whoami_cmd(out: Output) -> None:
    """Who the control plane thinks you are."""
    data = get_client().whoami()
    out.emit(data, f"{data.username} ({data.role})")
