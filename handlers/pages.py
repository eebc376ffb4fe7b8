"""Server-rendered pages (CONTRACT §5). Placeholder until the pages issue lands."""

from __future__ import annotations

import tornado.web

from handlers.base import BaseHandler, LoginRefused

HOME_BY_ROLE = {"client": "/parcels", "driver": "/driver", "dispatcher": "/dispatch"}


class LoginPage(BaseHandler):
    def get(self) -> None:
        self.render_page("login.html", error=None, email="", next=self.get_query_argument("next", ""))

    async def post(self) -> None:
        email = self.get_body_argument("email", "")
        try:
            user = await self.check_login(email, self.get_body_argument("password", ""))
        except LoginRefused as e:
            self.set_status(e.status if e.status == 429 else 200)
            return self.render_page("login.html", error=e.message, email=email, next=self.get_body_argument("next", ""))
        self.set_login_cookie(user)
        self.redirect(safe_next(self.get_body_argument("next", "")) or HOME_BY_ROLE[user.role])


class LogoutHandler(BaseHandler):
    def post(self) -> None:
        self.clear_cookie("user")
        self.redirect("/login")


class HomePage(BaseHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.redirect(HOME_BY_ROLE[self.current_user.role])


def safe_next(target: str) -> str:
    """A `next=` target only if it is a local path (no scheme, no host, no `//`)."""
    if not target.startswith("/") or target.startswith("//") or any(c in target for c in "\\\r\n"):
        return ""
    return target


ROUTES = [
    (r"/login", LoginPage),
    (r"/logout", LogoutHandler),
    (r"/", HomePage),
]
