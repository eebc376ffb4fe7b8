"""The pages over plain HTTP (no browser): headers, redirects, refusals, escaping and the dispatch form."""

from __future__ import annotations

import re

import pytest

from handlers import pages
from handlers.pages import content_security_policy, safe_next, tile_source
from models import parcels
from settings import Settings
from tests.conftest import PASSWORD, TEST_SECRET, recv


def test_safe_next_keeps_only_local_paths():
    assert safe_next("/parcels/3/track?x=1") == "/parcels/3/track?x=1"
    for bad in ("", "https://evil.test/", "//evil.test/", "/\\evil.test", "parcels", "/a\r\nSet-Cookie: x"):
        assert safe_next(bad) == ""


def test_tile_source_allows_the_tile_host_only():
    assert tile_source("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png") == ["https://*.tile.openstreetmap.org"]
    assert tile_source("https://tiles.example.com/{z}/{x}/{y}.png?key=k") == ["https://tiles.example.com"]
    assert tile_source("/static/img/tile.svg") == []


def test_content_security_policy_has_no_inline_scripts_and_names_the_sockets():
    config = Settings(public_ws_url="wss://track.example.com")
    policy = dict(part.split(" ", 1) for part in content_security_policy(config, "app.example.com").split("; "))
    assert policy["script-src"] == "'self'"
    assert "unsafe" not in content_security_policy(config, "app.example.com")
    assert policy["img-src"] == "'self' data: https://*.tile.openstreetmap.org"
    assert policy["connect-src"] == "'self' ws://app.example.com wss://app.example.com wss://track.example.com"
    assert policy["frame-ancestors"] == "'none'"
    bad_host = content_security_policy(config, "evil.test; script-src *")
    assert "evil" not in bad_host


@pytest.mark.gen_test
async def test_pages_send_their_headers_and_no_secrets(world):
    client = await world.user("client")
    parcel = await world.parcel(client)
    r = await world.page(f"/parcels/{parcel['_id']}/track", client)
    assert r.code == 200
    policy = r.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and f"ws://127.0.0.1:{world.port}" in policy
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Frame-Options"] == "DENY"
    html = r.body.decode()
    assert "<script>" not in html and " on" + "load=" not in html  # scripts come only from files
    assert "eyJ" not in html and TEST_SECRET not in html  # no token, no secret


@pytest.mark.gen_test
async def test_login_sets_an_httponly_cookie_and_goes_home(world):
    client = await world.user("client", email="home@example.test")
    r = await world.page("/login", method="POST", form={"email": "home@example.test", "password": PASSWORD})
    assert r.code == 302 and r.headers["Location"] == "/parcels"
    cookie = next(c for c in r.headers.get_list("Set-Cookie") if c.startswith("user="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    r = await world.page("/login", method="POST",
                    form={"email": client.email, "password": PASSWORD, "next": "https://evil.test/"})
    assert r.headers["Location"] == "/parcels"
    r = await world.page("/login", method="POST", form={"email": client.email, "password": "nope"})
    assert r.code == 200 and "wrong email or password" in r.body.decode()
    r = await world.page("/login", method="POST", form={"email": client.email, "password": PASSWORD}, xsrf=False)
    assert r.code == 403 and "This form has expired" in r.body.decode()


@pytest.mark.gen_test
async def test_people_not_logged_in_are_sent_to_login(world):
    r = await world.page("/parcels/7/track")
    assert r.code == 302 and r.headers["Location"] == "/login?next=%2Fparcels%2F7%2Ftrack"
    r = await world.page("/dispatch/parcels/7/assign", method="POST", form={"driver": "d@example.test"})
    assert r.code == 401 and "Your session has ended" in r.body.decode()  # 401, never 403, without a login
    r = await world.page("/no/such/page")
    assert r.code == 404 and "There is no page at this address." in r.body.decode()


@pytest.mark.gen_test
async def test_each_role_sees_its_own_pages(world):
    client, driver, dispatcher = await world.user("client"), await world.user("driver"), await world.user("dispatcher")
    other_driver = await world.user("driver")
    parcel = await world.parcel(client, driver)
    track = f"/parcels/{parcel['_id']}/track"
    for user, path, code in [
        (client, "/", 302), (client, "/parcels", 200), (client, "/dispatch", 403), (client, "/driver", 403),
        (driver, "/driver", 200), (driver, f"/driver/parcels/{parcel['_id']}", 200), (driver, "/parcels", 403),
        (other_driver, f"/driver/parcels/{parcel['_id']}", 404),
        (dispatcher, "/dispatch", 200), (dispatcher, f"/driver/parcels/{parcel['_id']}", 403),
        (client, track, 200), (driver, track, 200), (dispatcher, track, 200), (other_driver, track, 404),
    ]:
        r = await world.page(path, user)
        assert r.code == code, (user.role, path, r.code)
    for user, home in ((client, "/parcels"), (driver, "/driver"), (dispatcher, "/dispatch")):
        r = await world.page("/", user)
        assert (r.code, r.headers["Location"]) == (302, home)


@pytest.mark.gen_test
async def test_addresses_are_escaped(world):
    client = await world.user("client")
    parcel = await parcels.create_parcel(
        world.app.db, owner_id=client.id,
        pickup={"lat": 1.0, "lng": 2.0, "address": '<script>alert("x")</script>'},
        destination={"lat": 3.0, "lng": 4.0, "address": "\" onmouseover=\"alert(1)"},
    )
    for path in ("/parcels", f"/parcels/{parcel['_id']}/track"):
        html = (await world.page(path, client)).body.decode()
        assert "<script>alert" not in html and '" onmouseover="' not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


@pytest.mark.gen_test
async def test_dispatch_form_assigns_and_tells_the_watchers(world):
    client, driver, dispatcher = await world.user("client"), await world.user("driver", name="Ravi"), \
        await world.user("dispatcher")
    parcel = await world.parcel(client)
    watcher = await world.watch(parcel, client)
    path = f"/dispatch/parcels/{parcel['_id']}/assign"
    assert (await world.page(path, client, "POST", {"driver": driver.email})).code == 403
    assert (await world.page(path, dispatcher, "POST", {"driver": client.email})).code == 400
    assert (await world.page(path, dispatcher, "POST", {"driver": "x"})).code == 400
    r = await world.page(path, dispatcher, "POST", {"driver": driver.email.upper()})
    assert r.code == 302 and r.headers["Location"].startswith(f"/dispatch?assigned={parcel['_id']}")
    message = await recv(watcher)
    assert message["type"] == "status" and message["status"] == "assigned"
    page = (await world.page(r.headers["Location"].split("#")[0], dispatcher)).body.decode()
    assert f"Parcel #{parcel['_id']} is now assigned to Ravi ({driver.email})." in page
    done = await world.parcel(client, driver, status="delivered")
    r = await world.page(f"/dispatch/parcels/{done['_id']}/assign", dispatcher, "POST", {"driver": driver.email})
    assert r.code == 409


@pytest.mark.gen_test(timeout=30)
async def test_dispatch_pages_active_parcels_first_with_a_filter_and_a_search(world, monkeypatch):
    monkeypatch.setattr(pages, "PAGE_SIZE", 3)
    asha, ravi = await world.user("client"), await world.user("client")
    driver, dispatcher = await world.user("driver"), await world.user("dispatcher")
    statuses = ["delivered", "pending", "in_transit", "cancelled", "assigned", "delivered", "pending"]
    made = [await world.parcel(asha if i % 2 else ravi, driver if s != "pending" else None, status=s)
            for i, s in enumerate(statuses)]

    def shown(html: str) -> list[int]:
        return [int(n) for n in re.findall(r'<tr id="parcel-(\d+)"', html)]

    async def walk(path: str) -> list[list[int]]:
        seen = []
        while path:
            response = await world.page(path, dispatcher)
            assert response.code == 200, path
            html = response.body.decode()
            seen.append(shown(html))
            found = re.search(r'<a href="([^"]+)" id="next-page"', html)
            path = found and found.group(1).replace("&amp;", "&")
        return seen

    newest = made[::-1]
    active = [p["_id"] for p in newest if p["status"] not in parcels.FINISHED]
    finished = [p["_id"] for p in newest if p["status"] in parcels.FINISHED]
    assert await walk("/dispatch") == [(active + finished)[i:i + 3] for i in range(0, 7, 3)]
    assert await walk("/dispatch?status=delivered") == [[p["_id"] for p in newest if p["status"] == "delivered"]]
    assert sum(await walk(f"/dispatch?q={asha.email.upper()}&status=all"), []) == \
        [p["_id"] for p in newest if p["owner_id"] == asha.id]
    assert sum(await walk(f"/dispatch?q={driver.email}&status=active"), []) == \
        [p["_id"] for p in newest if p["driver_id"] == driver.id and p["status"] not in parcels.FINISHED]
    assert await walk(f"/dispatch?q={made[3]['_id']}") == [[made[3]["_id"]]]
    nobody = (await world.page("/dispatch?q=nobody@example.test", dispatcher)).body.decode()
    assert "No client or driver has the e-mail nobody@example.test." in nobody and not shown(nobody)
    assert (await world.page("/dispatch?status=lost", dispatcher)).code == 400
