"""People (docs/protocol.md, "People"): dispatchers list, search, add, deactivate and activate
users, through the API and the `/dispatch/people` page.

Deactivating someone moves their session on (every token and login cookie of theirs stops
working), closes every socket of theirs in every process (4401) and refuses their logins
until they are activated again; their parcels stay as they are. Who may do it is
models/access.py's (`can_manage_users`, `may_deactivate`).
"""

from __future__ import annotations

from typing import Any

from auth import passwords
from handlers.api import UsersHandler
from handlers.base import ApiHandler, BaseHandler, Refused
from handlers.openapi import BEFORE, LINK, Answer, array, described, limit, query, ref
from handlers.pages import PAGE_SIZE, ROLE_PLURALS, PageHandler, page_url, sentence, user_label
from models import users
from models.access import ROLES, User, can_manage_users, may_deactivate
from models.db import MAX_ID, parse_id

PEOPLE = "/dispatch/people"
ROLE_NAMES = {"client": "Client", "driver": "Driver", "dispatcher": "Dispatcher"}
TABS = [("", "All"), *((role, ROLE_PLURALS[role].capitalize()) for role in ROLES)]
FORM_FIELDS = ("name", "email", "role", "password")  # the add form's, in the order it shows them
DEACTIVATE_TEXT = ("They are logged out at once on every device, their open pages stop updating, and they cannot "
                   "log in until someone activates them again. Their parcels stay as they are.")


def refuse_change(user: User | None, user_id: int, active: bool) -> None:
    """`Refused` unless `user` may deactivate (or activate) user `user_id`: 403 for all but
    dispatchers, 400 for deactivating oneself."""
    if user is None or not can_manage_users(user):
        raise Refused(403, "only a dispatcher can deactivate or activate people")
    if not active and not may_deactivate(user, user_id):
        raise Refused(400, "you cannot deactivate yourself")


async def set_active(handler: BaseHandler, user_id: int, active: bool) -> User:
    """Deactivate or activate someone for the current user (`Refused` 403, 400, or 404 for
    nobody): their sessions end and their sockets close with 4401, in every process."""
    refuse_change(handler.current_user, user_id, active)
    before = await users.get_user(handler.db, user_id)
    if before is None:
        raise Refused(404, "no such user")
    if before.active == active:  # already so: their sessions go on
        return before
    updated = await (users.activate if active else users.deactivate)(handler.db, user_id)
    if updated is None:
        raise Refused(404, "no such user")
    # Also for an activation: every process forgets the deactivated user it may hold for handshakes.
    handler.hub.sessions_ended(updated.id)
    handler.application.drivers.forget()  # the dispatch page's driver picker, in this process
    return updated


# -- the API ---------------------------------------------------------------------------


class PeopleHandler(UsersHandler):
    """GET /api/users/: a page of people, newest first, by role and search (dispatchers).
    POST (UsersHandler): a dispatcher adds one."""

    @described("People, newest first, by role and search, a page at a time (dispatchers)",
               parameters=[query("role", {"enum": list(ROLES)}, "only this role"),
                           query("q", {"type": "string", "maxLength": users.MAX_EMAIL},
                                 "only those each of whose words begins one of theirs (name, e-mail)"),
                           limit(100, users.MAX_PAGE), BEFORE],
               responses={200: Answer(array(ref("ManagedUser")), headers=LINK)}, errors=(403,))
    async def get(self) -> None:
        if not can_manage_users(self.require_user()):
            raise Refused(403, "only a dispatcher can list users")
        role = self.get_query_argument("role", "").strip()
        if role and role not in ROLES:
            raise Refused(400, f"role must be one of {', '.join(ROLES)}")
        search = self.get_query_argument("q", "").strip()
        if len(search) > users.MAX_EMAIL:
            raise Refused(400, f"q must be at most {users.MAX_EMAIL} characters")
        limit = self.int_argument("limit", 100, 1, users.MAX_PAGE)
        before = self.int_argument("before", None, 1, MAX_ID)
        page = await users.find_people(self.db, role=role or None, search=search, limit=limit, before=before)
        if page.next_before is not None:
            self.set_next_link(before=page.next_before)
        self.send([user.managed() for user in page.users])


class ActiveHandler(ApiHandler):
    """POST /api/users/<id>/deactivate/ and /activate/ (the route's `active` says which) → the user."""

    def initialize(self, active: bool) -> None:
        self.active = active

    @described("Deactivate (…/deactivate/) or activate (…/activate/) someone (dispatchers); their sessions end",
               responses={200: ref("ManagedUser")}, errors=(400, 403, 404))
    async def post(self, user_id: str) -> None:
        self.require_user()
        self.send((await set_active(self, int(user_id), self.active)).managed())


# -- the page --------------------------------------------------------------------------


def person_view(user: User, me: User) -> dict[str, Any]:
    """A person as the page's list shows them."""
    return {"id": user.id, "name": user.name, "email": user.email, "role_label": ROLE_NAMES.get(user.role, user.role),
            "active": user.active, "you": user.id == me.id, "label": user_label(user)}


class PeopleBase(PageHandler):
    roles = ("dispatcher",)

    def list_url(self, role: str, search: str, **more: Any) -> str:
        """The list with this tab and search (and `more`), as a local path."""
        url = page_url(PEOPLE, role=role, q=search, **more)
        return url.rstrip("?")

    def shown(self, arguments: dict[str, str]) -> tuple[str, str]:
        """The tab and the search that `arguments` (a query or the buttons' hidden fields) name."""
        role = arguments.get("role", "")
        if role and role not in ROLES:
            raise Refused(400, "Choose one of the tabs: all, clients, drivers or dispatchers.")
        return role, arguments.get("q", "").strip()[:users.MAX_EMAIL]


class PeoplePage(PeopleBase):
    """`/dispatch/people`: people 50 a page, newest first, by role (tabs) and a search on name
    or e-mail (a GET form), each with a Deactivate or Activate button; and "Add a person"."""

    async def get(self) -> None:
        await self.show()

    async def post(self) -> None:
        """Add a person; a field that is wrong shows the form again, what was typed kept
        (but the password), the problem next to the field."""
        typed = {field: self.get_body_argument(field, "") for field in FORM_FIELDS}
        account, problems = users.check_account(typed["email"], typed["password"], typed["role"], typed["name"])
        if not problems:
            password_hash = await passwords.hash_password(account["password"], self.config.bcrypt_rounds)
            try:
                made = await users.create_user(self.db, email=account["email"], password_hash=password_hash,
                                               role=account["role"], name=account["name"])
            except users.EmailTaken:
                problems["email"] = users.EMAIL_TAKEN
        if problems:
            self.set_status(400)
            return await self.show(typed={**typed, "password": ""},
                                   problems={f: sentence(problems[f]) for f in FORM_FIELDS if f in problems},
                                   retype=bool(typed["password"]) and "password" not in problems)
        self.application.drivers.forget()
        self.redirect(self.list_url(made.role, "", added=made.id) + f"#person-{made.id}")

    async def show(self, typed: dict[str, str] | None = None, problems: dict[str, str] | None = None,
                   retype: bool = False) -> None:
        role, search = self.shown({k: self.get_query_argument(k, "") for k in ("role", "q")})
        before = self.int_argument("before", None, 1, MAX_ID)
        page = await users.find_people(self.db, role=role or None, search=search, limit=PAGE_SIZE, before=before)
        me = self.current_user
        self.page(
            "people.html",
            confirm=None,
            people=[person_view(user, me) for user in page.users],
            tabs=[(value, label, self.list_url(value, search)) for value, label in TABS],
            role=role, search=search, role_plural=ROLE_PLURALS.get(role, "people"),
            clear_url=self.list_url(role, ""),
            add_url=self.list_url(role, search),  # the form comes back on this tab
            later=page.next_before and self.list_url(role, search, before=page.next_before),
            first=self.list_url(role, search) if before else None,
            notice=await self.notice(),
            typed=typed or {"name": "", "email": "", "role": role, "password": ""},
            problems=problems or {},
            retype=retype,
            roles=[(value, ROLE_NAMES[value]) for value in ROLES],
            max_name=users.MAX_NAME,
            deactivate_text=DEACTIVATE_TEXT,
        )

    async def notice(self) -> str:
        """What the last step did: `added=<id>` or `changed=<id>` (the person as they are now)."""
        added = parse_id(self.get_query_argument("added", ""))
        changed = parse_id(self.get_query_argument("changed", ""))
        person = await users.get_user(self.db, added or changed) if added or changed else None
        if person is None:
            return ""
        if added:
            return f"Added {user_label(person)} as a {person.role}. They can log in now."
        if person.active:
            return f"{user_label(person)} is active again and can log in."
        return f"{user_label(person)} is deactivated and was logged out everywhere."


class PersonActivePage(PeopleBase):
    """The list's Deactivate and Activate buttons (the route's `active` says which).
    Deactivating asks first: the button's dialog (static/js/people.js) sends `confirmed`,
    and without JavaScript this answers with a page that asks."""

    def initialize(self, active: bool) -> None:
        self.active = active

    async def post(self, user_id: str) -> None:
        person = await users.get_user(self.db, int(user_id))
        if person is None:
            raise Refused(404, "There is no such person.")
        refuse_change(self.current_user, person.id, self.active)
        role, search = self.shown({k: self.get_body_argument(k, "") for k in ("role", "q")})
        if not self.active and self.get_body_argument("confirmed", "") != "yes":
            return self.page("people.html", confirm=person_view(person, self.current_user), role=role,
                             search=search, back=self.list_url(role, search) + f"#person-{person.id}",
                             deactivate_text=DEACTIVATE_TEXT)
        await set_active(self, person.id, self.active)
        self.redirect(self.list_url(role, search, changed=person.id) + f"#person-{person.id}")
