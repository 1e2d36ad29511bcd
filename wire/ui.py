"""The topology page's login ticket (POST /v1/ui/tickets, admin): a single-use link for a browser."""

from __future__ import annotations

from pydantic import Field

from wire.models import WireModel


class UiTicket(WireModel):
    path: str = Field(description="Open this path on the same controller: /ui/login?ticket=...")
    expires_in_s: float = Field(description="Seconds the link works, once.")
