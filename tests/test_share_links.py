"""Share links (CONTRACT §7, docs/protocol.md "Share links"): short links made and revoked by
the owner or a dispatcher, a page without login that shows the truck only once the parcel is on
its way to the recipient, a receive-only socket, refused everywhere else."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from auth import tokens
from models import parcels
from models.db import utcnow
from tests.conftest import TEST_SECRET, World, body, recv, refused, settings
from tests.helpers import (
    expect_closed,
    expect_error,
    expect_update,
    nothing_arrives,
    scene,
    send_location,
    subscribed,
)


async def share(world: World, parcel_id: int, user) -> dict:
    response = await world.api("POST", f"/api/parcels/{parcel_id}/share/", user)
    assert response.code == 201, response.body
    return body(response)


async def viewer(world: World, parcel_id: int, token: str):
    ws = await world.socket(parcel_id, token)
    got = await recv(ws)
    assert got["type"] == "subscribed" and got["role"] == "viewer", got
    return ws


@pytest.mark.gen_test
async def test_the_owner_and_a_dispatcher_make_links_others_may_not(world):
    s = await scene(world)
    for user in (s.client, s.dispatcher):
        link = await share(world, s.id, user)
        assert set(link) == {"url", "token", "expires_at"}
        assert link["url"] == f"http://127.0.0.1:{world.port}/t/{link['token']}"
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", link["token"]), link  # short enough for a text message
        stored = await world.app.db.share_links.find_one({"_id": link["token"]})
        assert stored["parcel_id"] == s.id and stored["version"] == 0
        expires = datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00"))
        assert abs((expires - datetime.now(UTC)) - timedelta(seconds=172_800)) < timedelta(seconds=30)
        assert abs(stored["expires_at"] - expires) < timedelta(milliseconds=1)
        await viewer(world, s.id, link["token"])  # the socket takes it
    refused(await world.api("POST", f"/api/parcels/{s.id}/share/", s.driver), 403)
    stranger = await world.user("client")
    refused(await world.api("POST", f"/api/parcels/{s.id}/share/", stranger), 404)
    refused(await world.api("DELETE", f"/api/parcels/{s.id}/share/", stranger), 404)
    refused(await world.api("POST", f"/api/parcels/{s.id}/share/"), 401)


@settings(share_link_ttl=60)
@pytest.mark.gen_test
async def test_a_link_lives_share_link_ttl_and_at_most_an_hour_after_the_parcel_finished(world):
    s = await scene(world)
    link = await share(world, s.id, s.client)
    expires = datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00"))
    assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=60)
    expired = tokens.issue_share(s.id, 0, int(time.time()) - 1, TEST_SECRET)
    assert (await world.page(f"/t/{expired}")).code == 404
    # a short link past its expires_at: no page, no history, no socket
    lapsed = (await share(world, s.id, s.client))["token"]
    past = utcnow() - timedelta(seconds=1)
    await world.app.db.share_links.update_one({"_id": lapsed}, {"$set": {"expires_at": past}})
    assert (await world.page(f"/t/{lapsed}")).code == 404
    refused(await world.api("GET", f"/t/{lapsed}/locations"), 404)
    ws = await world.socket(s.id, lapsed)
    assert "no longer valid" in await expect_error(ws)
    await expect_closed(ws, 4401)
    # a parcel delivered more than an hour ago: its old links stop, and no new one is made
    await parcels.set_status(world.app.db, s.id, "delivered")
    old = datetime.now(UTC) - timedelta(hours=2)
    await world.app.db.parcels.update_one({"_id": s.id, "timeline.status": "delivered"},
                                          {"$set": {"timeline.$.timestamp": old}})
    assert (await world.page(f"/t/{link['token']}")).code == 404
    refused(await world.api("POST", f"/api/parcels/{s.id}/share/", s.client), 409)


@pytest.mark.gen_test
async def test_the_share_page_needs_no_login_and_shows_no_email_or_user_id(world):
    s = await scene(world)
    driver = await world.user("driver", email="dana.driver@example.test", name="Dana")
    await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, {"driver_id": driver.id})
    link = await share(world, s.id, s.client)
    page = await world.page(f"/t/{link['token']}")
    assert page.code == 200
    html = page.body.decode()
    assert "Dana" in html and "India Gate" in html and "Hauz Khas" in html
    assert "@" not in html.replace(link["token"], "")
    assert '"owner_id"' not in html and '"driver_id"' not in html
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"):
        assert page.headers.get(header), header
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", ["forged", "revoked", "garbage"])
async def test_an_expired_revoked_or_forged_link_is_a_404_page_saying_so(world, kind):
    s = await scene(world)
    link = await share(world, s.id, s.client)
    token = link["token"]
    if kind == "forged":  # a short token never made, and a signed one with another key
        token = tokens.new_share_token()
        signed = tokens.issue_share(s.id, 0, int(time.time()) + 60, "another-secret" + "k" * 40)
        assert (await world.page(f"/t/{signed}")).code == 404
    elif kind == "revoked":
        assert (await world.api("DELETE", f"/api/parcels/{s.id}/share/", s.client)).code == 204
    else:
        token = "not.a.token"
    page = await world.page(f"/t/{token}")
    assert page.code == 404
    html = page.body.decode()
    assert "no longer valid" in html and "Ask the sender for a new link" in html
    assert "login" not in html.lower() and "log in" not in html.lower()  # its holder may have no account
    refused(await world.api("GET", f"/t/{token}/locations"), 404)


@pytest.mark.gen_test
async def test_a_share_token_is_refused_wherever_an_access_token_is_expected(world):
    s = await scene(world)
    token = (await share(world, s.id, s.client))["token"]
    for path in (f"/api/parcels/{s.id}/", "/api/me/", "/api/parcels/", f"/api/parcels/{s.id}/locations/"):
        refused(await world.api("GET", path, headers={"Authorization": f"Bearer {token}"}), 401, path)
    for other in ("/ws/driver/", "/ws/dispatch/"):
        ws = await world.socket(None, token, path=other)
        await expect_error(ws)
        await expect_closed(ws, 4401)


@pytest.mark.gen_test
async def test_the_share_socket_receives_and_may_not_send_and_sees_no_user_id(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    await send_location(driver, 28.60, 77.22)
    token = (await share(world, s.id, s.client))["token"]
    ws = await world.socket(s.id, token)
    got = await recv(ws)
    assert got.pop("stops_before", 0) == 0  # the route's first stop, once the hub has read the route
    assert got == {"type": "subscribed", "parcel_id": s.id, "role": "viewer", "status": "in_transit"}
    snapshot = await expect_update(ws, 28.60, 77.22)
    assert snapshot["driver_id"] is None
    driver.write_message(json.dumps({"type": "location_update", "lat": 28.59, "lng": 77.22}))
    mine = await expect_update(driver, 28.59, 77.22)
    seen = await expect_update(ws, 28.59, 77.22)
    assert mine["driver_id"] == str(s.driver.id) and seen == {**mine, "driver_id": None}
    ws.write_message(json.dumps({"type": "location_update", "lat": 1, "lng": 2}))
    assert "driver" in await expect_error(ws)
    driver.write_message(json.dumps({"type": "location_update", "lat": 28.58, "lng": 77.22}))
    await expect_update(ws, 28.58, 77.22)  # still open


@pytest.mark.gen_test
async def test_a_share_token_opens_only_its_own_parcel(world):
    s = await scene(world)
    other = await world.parcel(s.client, s.driver, status="in_transit")
    token = (await share(world, s.id, s.client))["token"]
    ws = await world.socket(other["_id"], token)
    await expect_error(ws)
    await expect_closed(ws, 4403)


@pytest.mark.gen_test
async def test_revoking_closes_open_share_sockets_with_4401_and_new_ones_are_refused(world):
    s = await scene(world)
    token = (await share(world, s.id, s.dispatcher))["token"]
    ws = await viewer(world, s.id, token)
    owner = await subscribed(world, s.id, s.client)
    assert (await world.api("DELETE", f"/api/parcels/{s.id}/share/", s.dispatcher)).code == 204
    assert "no longer valid" in await expect_error(ws)
    await expect_closed(ws, 4401)
    await nothing_arrives(owner)  # only the link's sockets go
    again = await world.socket(s.id, token)
    await expect_error(again)
    await expect_closed(again, 4401)
    fresh = (await share(world, s.id, s.dispatcher))["token"]  # a new link works
    await viewer(world, s.id, fresh)


@pytest.mark.gen_test
async def test_when_the_parcel_finishes_share_sockets_get_the_status_then_4401(world):
    s = await scene(world)
    token = (await share(world, s.id, s.client))["token"]
    ws = await viewer(world, s.id, token)
    delivered = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": "delivered"})
    assert delivered.code == 200
    assert (await recv(ws))["status"] == "delivered"
    await expect_error(ws)
    await expect_closed(ws, 4401)
    page = await world.page(f"/t/{token}")  # the page still shows how it ended, for an hour
    assert page.code == 200 and 'data-status="delivered">Delivered<' in page.body.decode(), page.code


@pytest.mark.gen_test
async def test_the_share_pages_history_is_paged_like_the_api(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    for i in range(10):  # every 5th is sampled: two samples
        await send_location(driver, 28.5 + i / 1000, 77.2)
    await world.app.hub.writer.flush()
    token = (await share(world, s.id, s.client))["token"]
    first = await world.api("GET", f"/t/{token}/locations?limit=1")
    assert first.code == 200 and len(body(first)["locations"]) == 1
    assert 'rel="next"' in first.headers["Link"]
    everything = body(await world.api("GET", f"/t/{token}/locations"))["locations"]
    api = body(await world.api("GET", f"/api/parcels/{s.id}/locations/", s.client))["locations"]
    assert everything == api and len(api) == 2


@pytest.mark.gen_test
async def test_a_signed_share_token_made_before_the_short_ones_still_works_until_it_expires(world):
    s = await scene(world)
    signed = tokens.issue_share(s.id, 0, int(time.time()) + 60, TEST_SECRET)
    assert (await world.page(f"/t/{signed}")).code == 200
    assert (await world.api("GET", f"/t/{signed}/locations")).code == 200
    await viewer(world, s.id, signed)
    assert (await world.api("DELETE", f"/api/parcels/{s.id}/share/", s.client)).code == 204
    assert (await world.page(f"/t/{signed}")).code == 404  # revoking ends it as it ends the short ones


def shown_parcel(html: str) -> dict:
    """The parcel as the share page hands it to its script (data-parcel)."""
    raw = re.search(r'data-parcel="([^"]*)"', html).group(1)
    return json.loads(raw.replace("&#34;", '"').replace("&quot;", '"').replace("&#39;", "'").replace("&amp;", "&"))


@settings(location_sample_every=1, last_location_interval=0.0)
@pytest.mark.gen_test(timeout=30)
async def test_a_link_shows_no_position_or_path_until_the_parcel_is_in_transit_and_none_from_before(world):
    s = await scene(world, "picked_up")
    token = (await share(world, s.id, s.client))["token"]
    driver = await subscribed(world, s.id, s.driver)
    for i in range(3):  # the driver's earlier stops: none of this is the recipient's business
        await send_location(driver, 28.60 - i / 1000, 77.22)
    await world.app.hub.writer.flush()
    html = (await world.page(f"/t/{token}")).body.decode()
    assert shown_parcel(html)["last_location"] is None  # no truck on the page
    assert "once your parcel is on its way" in html
    assert body(await world.api("GET", f"/t/{token}/locations"))["locations"] == []
    refused(await world.api("GET", f"/t/{token}/locations?since=yesterday"), 400)  # the same checks as ever

    owner = body(await world.api("GET", f"/api/parcels/{s.id}/locations/", s.client))["locations"]
    assert len(owner) == 3  # the owner's history is untouched

    went = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": "in_transit"})
    assert went.code == 200
    moment = body(went)["timeline"][-1]["timestamp"]
    await recv(driver)  # its status message
    for i in range(2):
        await send_location(driver, 28.59 - i / 1000, 77.22)
    await world.app.hub.writer.flush()
    shown = body(await world.api("GET", f"/t/{token}/locations"))["locations"]
    assert [p["lat"] for p in shown] == [28.59, 28.589]  # from the moment it went in_transit, not before
    assert all(p["timestamp"] >= moment for p in shown)
    html = (await world.page(f"/t/{token}")).body.decode()
    assert shown_parcel(html)["last_location"]["lat"] == 28.589
    assert len(body(await world.api("GET", f"/api/parcels/{s.id}/locations/", s.client))["locations"]) == 5


@pytest.mark.gen_test
async def test_a_finished_parcels_share_page_shows_its_final_status_in_the_pill_and_no_truck(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    await send_location(driver, 28.56, 77.20)
    token = (await share(world, s.id, s.client))["token"]
    assert (await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": "delivered"})).code == 200
    html = (await world.page(f"/t/{token}")).body.decode()
    pill = re.search(r'<span id="connection"[^>]*data-state="([^"]+)".*?id="connection-text">([^<]*)<', html)
    assert pill.groups() == ("ended", "Delivered"), pill.groups()  # not a grey "Offline"
    assert shown_parcel(html)["last_location"] is None  # no stale truck
    assert body(await world.api("GET", f"/t/{token}/locations"))["locations"] == []


@settings(business_name="Acme Couriers")
@pytest.mark.gen_test
async def test_the_share_page_names_the_business_and_your_parcel_and_places_in_words(world):
    s = await scene(world)
    await world.app.db.parcels.update_one({"_id": s.id}, {"$set": {"pickup.address": ""}})
    token = (await share(world, s.id, s.client))["token"]
    html = (await world.page(f"/t/{token}")).body.decode()
    title = re.search(r"<title>(.*?)</title>", html).group(1)
    assert title == "Your parcel: In transit · Acme Couriers", title
    assert '<span class="brand-name" id="business-name">Acme Couriers</span>' in html
    assert '<h1 id="parcel-title">Your parcel</h1>' in html and f"Parcel #{s.id}" not in html
    assert "Near 28.610, 77.230" in html and "28.61000" not in html  # no address: rounded, not six decimals
    assert "Hauz Khas" in html
    gone = (await world.page("/t/" + tokens.new_share_token())).body.decode()
    assert "Acme Couriers" in gone
