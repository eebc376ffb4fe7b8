"""`/u/<token>`: an e-mail's unsubscribe link (docs/protocol.md, "E-mail to the recipient").

No login: the token names one address (models/mail.py). GET asks (a mail scanner that
opens every link must not unsubscribe anyone); POST unsubscribes, from the page's button
or from a mail client's one-click `List-Unsubscribe-Post` (RFC 8058), which carries no
XSRF cookie: the token is the only credential, and all it can do is stop e-mail.
"""

from __future__ import annotations

from handlers.base import Refused
from handlers.pages import PageHandler
from models import mail


class UnsubscribePage(PageHandler):
    login_required = False

    def check_xsrf_cookie(self) -> None:
        pass  # see the module's docstring

    async def get(self, token: str) -> None:
        found = await mail.find_token(self.db, token)
        if found is None:
            raise Refused(404, "This unsubscribe link is not valid. Copy the whole link from the e-mail.")
        self.show(found["_id"], done=found.get("unsubscribed_at") is not None)

    async def post(self, token: str) -> None:
        found = await mail.unsubscribe(self.db, token)
        if found is None:
            raise Refused(404, "This unsubscribe link is not valid. Copy the whole link from the e-mail.")
        self.show(found["_id"], done=True)

    def show(self, address: str, done: bool) -> None:
        self.page("unsubscribe.html", address=address, done=done, business_name=self.config.business_name)
