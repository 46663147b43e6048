"""The Jupyter terminal: a JupyterHub spawner whose servers are Sky Port jobs.

``c.JupyterHub.spawner_class = "skyport"`` (the entry point) names
:class:`SkyPortSpawner`; it needs the ``jupyter`` extra (``pip install
'skyport[jupyter]'``).  The server is reached through the relay
(``skyport.relay``): no node opens an inbound port.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SkyPortSpawner"]


def __getattr__(name: str) -> Any:
    # lazily: ``skyport.jupyter.node`` runs on nodes that have no JupyterHub installed
    if name == "SkyPortSpawner":
        from skyport.jupyter.spawner import SkyPortSpawner

        return SkyPortSpawner
    raise AttributeError(name)
