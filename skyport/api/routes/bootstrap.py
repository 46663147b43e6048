"""A cloud node's first call: its one-time bootstrap credential for its job token.

Cloud user-data outlives the boot (a provider keeps it readable from the VM's
metadata service), so it carries no job token, only a credential that the
agent exchanges here, once, within minutes (``skyport.gate.bootstrapcred``):
``POST /v1/bootstrap/exchange``.  No client certificate: the credential is
the proof.
"""

from __future__ import annotations

from fastapi import APIRouter

from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.protocol import BootstrapExchangeAnswer, BootstrapExchangeBody

__all__ = ["bootstrap_router"]


def bootstrap_router(core: CorePort) -> APIRouter:
    r = APIRouter(prefix="/v1/bootstrap")

    @r.post("/exchange")
    async def exchange(body: BootstrapExchangeBody) -> BootstrapExchangeAnswer:
        return BootstrapExchangeAnswer.model_validate(await core.execute(
            c.BootstrapExchange(body.credential, body.job_id, body.node_rank)))

    return r
