"""Who may see and do what on a parcel: decided here once, for pages, API and socket.

docs/protocol.md, "Parcels and who sees them": the assigned driver, the owning client and any dispatcher may watch a
parcel; only the assigned driver may send its location; nobody else sees it at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

ROLES = ("client", "driver", "dispatcher")
VIEWER = "viewer"  # the holder of a share link: one parcel, receive only, no account


@dataclass(frozen=True)
class User:
    id: int
    role: str
    email: str = ""
    name: str = ""
    session: int = 0  # moves on at logout, a new password or a new role: older tokens stop working
    active: bool = True  # a deactivated user cannot log in or be given parcels (docs/protocol.md, "People")
    # An API key's caller acts as a dispatcher within these scopes (docs/protocol.md, "API keys");
    # None for a person, whose role alone decides.
    scopes: frozenset[str] | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "name": self.name, "role": self.role}

    def managed(self) -> dict[str, Any]:
        """The user as a dispatcher manages them: `public()` and whether they are active."""
        return {**self.public(), "active": self.active}


def link_viewer(parcel_id: int) -> User:
    """Whoever holds a valid share link of this parcel (docs/protocol.md, "Share links")."""
    return User(id=-parcel_id, role=VIEWER)


def can_view(user: User, parcel: Mapping[str, Any]) -> bool:
    """May this user see the parcel, open its socket and receive its updates?"""
    if user.role == VIEWER:
        return parcel.get("_id") == -user.id
    if user.role == "dispatcher":
        return True
    if user.role == "client":
        return parcel.get("owner_id") == user.id
    if user.role == "driver":
        return parcel.get("driver_id") == user.id
    return False


def visible_scope(user: User) -> dict[str, Any] | None:
    """`can_view` as the equality a list of parcels is limited to (None: sees nothing)."""
    if user.role == "dispatcher":
        return {}
    if user.role == "client":
        return {"owner_id": user.id}
    if user.role == "driver":
        return {"driver_id": user.id}
    return None


def can_share(user: User, parcel: Mapping[str, Any]) -> bool:
    """Its owner and dispatchers make and revoke a parcel's share links."""
    return user.role == "dispatcher" or (user.role == "client" and parcel.get("owner_id") == user.id)


def can_record_proof(user: User, parcel: Mapping[str, Any]) -> bool:
    """Only the driver a parcel is assigned to records its proof of delivery (docs/protocol.md,
    "Proof of delivery"); whoever may see the parcel sees the proof."""
    return user.role == "driver" and parcel.get("driver_id") == user.id


def can_send_location(user: User, driver_id: int | None) -> bool:
    """Only the driver a parcel is assigned to (`driver_id`) sends its location."""
    return user.role == "driver" and driver_id == user.id


class Tracked(Protocol):
    """What `location_refusal` needs of a parcel (realtime.channel.ParcelState is one)."""

    @property
    def driver_id(self) -> int | None: ...

    @property
    def status(self) -> str: ...

    @property
    def finished(self) -> bool: ...


def location_refusal(user: User, parcel: Tracked) -> str | None:
    """Why this user may not send a location for the parcel in its state now (None: they may):
    only its assigned driver, and only until it is finished."""
    if not can_send_location(user, parcel.driver_id):
        return "only the parcel's assigned driver can send its location"
    if parcel.finished:
        return f"the parcel is {parcel.status}; its location is no longer tracked"
    return None


def can_create_parcels(user: User) -> bool:
    """Clients create parcels for themselves; dispatchers for a client they name."""
    return user.role in ("client", "dispatcher")


def names_owner(user: User) -> bool:
    """Does this user say whose parcel it creates (a dispatcher), or is it their own (a client)?"""
    return user.role == "dispatcher"


def may_own_parcels(user: User | None) -> bool:
    """Can parcels be created for this user? An active client."""
    return user is not None and user.role == "client" and user.active


def may_drive(user: User | None) -> bool:
    """Can parcels be assigned to this user? An active driver."""
    return user is not None and user.role == "driver" and user.active


def can_assign(user: User) -> bool:
    return user.role == "dispatcher"


def can_manage_users(user: User) -> bool:
    """Dispatchers create accounts, change roles, deactivate and activate people."""
    return user.role == "dispatcher"


def may_deactivate(user: User, user_id: int) -> bool:
    """A dispatcher deactivates anyone but themselves: so one active dispatcher always remains."""
    return can_manage_users(user) and user_id != user.id


def may_set_status(user: User, parcel: Mapping[str, Any], status: str) -> bool:
    """Its driver and dispatchers move a parcel on; its owner may only cancel it, and so may an
    API key with `parcels:write` (docs/protocol.md, "API keys")."""
    if user.scopes is not None:
        return status == "cancelled"
    if user.role == "dispatcher":
        return True
    if user.role == "driver":
        return parcel.get("driver_id") == user.id and status != "cancelled"
    if user.role == "client":
        return parcel.get("owner_id") == user.id and status == "cancelled"
    return False


BEFORE_PICKUP = ("pending", "assigned")


def can_change_recipient(user: User, parcel: Mapping[str, Any]) -> bool:
    """Its owner and dispatchers change a parcel's recipient (docs/protocol.md, "The recipient")."""
    return user.role == "dispatcher" or (user.role == "client" and parcel.get("owner_id") == user.id)


def recipient_statuses(user: User) -> tuple[str, ...] | None:
    """While a parcel has which statuses this user (who `can_change_recipient`) may change its
    recipient: its owner until it is picked up; a dispatcher at any time (None)."""
    return None if user.role == "dispatcher" else BEFORE_PICKUP


# -- API keys (docs/protocol.md, "API keys") -------------------------------------------

READ, WRITE = "parcels:read", "parcels:write"
SCOPES = (READ, WRITE)
KEYS_ONLY_PARCELS = ("an API key may only read, create, import, update and cancel parcels; "
                     "this needs a dispatcher's login")


def key_refusal(user: User, scope: str | None) -> str | None:
    """Why this caller may not use an endpoint that an API key may use with `scope` (None: no
    key may use it); None when they may: every person (their role decides further), and a key
    holding that scope."""
    if user.scopes is None:
        return None
    if scope is None:
        return KEYS_ONLY_PARCELS
    if scope not in user.scopes:
        return f"this API key lacks the {scope} scope"
    return None


def can_manage_integrations(user: User) -> bool:
    """Dispatchers create and revoke API keys and webhooks (a key itself never)."""
    return user.role == "dispatcher" and user.scopes is None
