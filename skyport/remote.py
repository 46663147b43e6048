"""Call a Ray actor's methods as plain coroutines.

The Core and the REST API are written against objects with async methods;
in the control plane those objects are actors, in unit tests plain
services.  This adapter is the only place that knows the difference.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from skyport.core.commands import Command
from skyport.errors import ControlPlaneError, SkyportError


class ActorProxy:
    """An actor handle whose methods are coroutines; for the Core, a ``CorePort``."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def execute(self, command: Command) -> Any:
        """Run one REST call's command on the Core actor (``CoreActor.execute``)."""
        return await self.__getattr__("execute")(command)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._actor, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method.remote(*args, **kwargs)
            except RayTaskError as exc:
                # callers handle Sky Port's own errors; Ray's wrapper would hide them
                if isinstance(exc.cause, SkyportError):
                    raise exc.cause from None
                raise
            except (RayActorError, ActorUnavailableError) as exc:
                # the control plane is stopping or restarting: callers retry (503)
                raise ControlPlaneError(f"the control plane is not available: {exc}") from exc

        call.__name__ = name
        return call
