"""Budgets and costs under ``/v1``: ``skyport budget`` and ``skyport cost``.

Who may do what is the Core's to decide (``skyport.core.budget_desk``):
anyone reads their own budget and costs, an admin anyone's, and only an
admin sets a budget.  The route adds one check the Core cannot make: the
user an admin names must be registered (the registry is the API's).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from skyport.api.deps import User
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.errors import NotFoundError
from skyport.protocol import BudgetBody, BudgetView, CostView
from skyport.users import UserRegistry

__all__ = ["budgets_router"]

UserName = Annotated[str, Path(min_length=1, max_length=64)]
UserQuery = Annotated[str | None, Query(min_length=1, max_length=64)]


def budgets_router(core: CorePort) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/budget")
    async def budget(who: User, user: UserQuery = None) -> BudgetView:
        """Your budget (an admin: ``?user=``'s): limit, period, spent, committed, remaining."""
        return BudgetView.model_validate(await core.execute(c.GetBudget(who, user)))

    @r.put("/budgets/{user}")
    async def set_budget(user: UserName, body: BudgetBody, who: User,
                         request: Request) -> BudgetView:
        """Set what ``user`` may spend per period (admins only); waiting jobs are planned again."""
        registry: UserRegistry | None = getattr(request.app.state, "users", None)
        if who.is_admin and registry is not None and \
                user not in {u.name for u in registry.list()}:
            raise NotFoundError(f"no user {user!r} is registered here ('skyport user list')")
        return BudgetView.model_validate(
            await core.execute(c.SetBudget(who, user, body.limit, body.period)))

    @r.get("/cost")
    async def cost(who: User, user: UserQuery = None,
                   since: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
                   by: Literal["gate", "user", "day"] = "gate") -> CostView:
        """What clusters cost while jobs ran, by gate, user or day (a user: their own)."""
        return CostView.model_validate(await core.execute(c.CostReport(who, user, since, by)))

    return r
