"""The HTTP API (docs/protocol.md) over real HTTP: tokens, visibility, lifecycle, errors."""

from __future__ import annotations

import re
import time

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.conftest import PASSWORD, TEST_SECRET, body, claims, refused


async def login_token(world, email: str, password: str = PASSWORD):
    return await world.api("POST", "/api/token/", body={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def browser_login(world, email: str, password: str = PASSWORD) -> dict[str, str]:
    """Log in through the /login form like a browser; returns the cookies it was given."""
    client = AsyncHTTPClient()
    page = await client.fetch(f"http://127.0.0.1:{world.port}/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode()).group(1)
    cookies = {"_xsrf": page.headers["Set-Cookie"].split("_xsrf=")[1].split(";")[0]}
    form = f"_xsrf={xsrf}&email={email}&password={password}"
    try:
        await client.fetch(HTTPRequest(
            f"http://127.0.0.1:{world.port}/login", method="POST", body=form, follow_redirects=False,
            headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())},
        ))
        raise AssertionError("login did not redirect")
    except HTTPClientError as e:
        assert e.code == 302, e
        for header in e.response.headers.get_list("Set-Cookie"):
            name, _, rest = header.partition("=")
            cookies[name] = rest.split(";")[0]
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "X-XSRFToken": xsrf}


# -- tokens --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_token_pair_for_right_password_and_one_message_for_both_wrongs(world):
    client = await world.user("client", email="Asha@Example.test")
    ok = await login_token(world, "  asha@EXAMPLE.test ")
    assert ok.code == 200
    pair = body(ok)
    claims = jwt.decode(pair["access"], TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(client.id) and claims["role"] == "client" and claims["type"] == "access"
    assert {"iat", "exp", "jti"} <= claims.keys()
    assert jwt.decode(pair["refresh"], TEST_SECRET, algorithms=["HS256"])["type"] == "refresh"

    wrong_password = await login_token(world, "asha@example.test", "not the password")
    unknown_email = await login_token(world, "nobody@example.test")
    assert refused(wrong_password, 401) == refused(unknown_email, 401)
    assert body(wrong_password) == body(unknown_email) == {"error": "wrong email or password"}


@pytest.mark.gen_test
async def test_repeated_failed_logins_are_throttled(world):
    await world.user("client", email="victim@example.test")
    for _ in range(world.app.config.login_max_failures):
        refused(await login_token(world, "victim@example.test", "guess"), 401)
    throttled = await login_token(world, "victim@example.test", PASSWORD)
    refused(throttled, 429)
    assert "try again" in body(throttled)["error"]
    assert int(throttled.headers["Retry-After"]) > 0


@pytest.mark.gen_test
async def test_token_endpoint_rejects_malformed_bodies(world):
    refused(await world.api("POST", "/api/token/", raw=b"{not json"), 400)
    refused(await world.api("POST", "/api/token/", body=["a", "b"]), 400)
    missing = await world.api("POST", "/api/token/", body={"email": "x@example.test"})
    assert missing.code == 400 and "required" in body(missing)["error"]


@pytest.mark.gen_test
async def test_refresh_gives_a_new_access_token_and_refuses_anything_else(world):
    user = await world.user("driver")
    pair = body(await login_token(world, user.email))
    refreshed = await world.api("POST", "/api/token/refresh/", body={"refresh": pair["refresh"]})
    assert refreshed.code == 200
    assert (await world.api("GET", "/api/me/", headers=bearer(body(refreshed)["access"]))).code == 200
    for bad in (pair["access"], "garbage", None):
        r = await world.api("POST", "/api/token/refresh/", body={"refresh": bad})
        refused(r, 401)


@pytest.mark.gen_test
async def test_api_refuses_bad_tokens(world):
    user = await world.user("dispatcher")
    good = world.token(user)
    header, payload, signature = good.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    without_exp = {k: v for k, v in claims(user).items() if k != "exp"}
    cases = {
        "expired": jwt.encode(claims(user, exp=int(time.time()) - 5), TEST_SECRET, algorithm="HS256"),
        "tampered": tampered,
        "alg none": jwt.encode(claims(user), None, algorithm="none"),
        "refresh as access": world.token(user, "refresh"),
        "no exp": jwt.encode(without_exp, TEST_SECRET, algorithm="HS256"),
        "other key": jwt.encode(claims(user), "another-secret-" * 3, algorithm="HS256"),
    }
    for name, token in cases.items():
        r = await world.api("GET", "/api/me/", headers=bearer(token))
        refused(r, 401, name)
        assert body(r)["error"], name
    refused(await world.api("GET", "/api/me/", headers={"Authorization": f"Basic {good}"}), 401)
    refused(await world.api("GET", "/api/me/"), 401)
    assert (await world.api("GET", "/api/me/", headers=bearer(good))).code == 200


@pytest.mark.gen_test
async def test_socket_token_needs_the_login_cookie(world):
    user = await world.user("client")
    refused(await world.api("GET", "/api/token/ws/"), 401)
    refused(await world.api("GET", "/api/token/ws/", user=user), 401)  # Bearer is not a browser login
    cookies = await browser_login(world, user.email)
    r = await world.api("GET", "/api/token/ws/", headers=cookies)
    assert r.code == 200
    claims = jwt.decode(body(r)["access"], TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user.id) and claims["exp"] - claims["iat"] == 60


# -- users -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_me_never_shows_the_password_hash(world):
    user = await world.user("driver", name="Ravi")
    me = body(await world.api("GET", "/api/me/", user))
    assert me == {"id": user.id, "email": user.email, "name": "Ravi", "role": "driver"}


@pytest.mark.gen_test
async def test_dispatcher_creates_users_and_emails_are_unique_ignoring_case(world):
    dispatcher = await world.user("dispatcher")
    new = {"email": "New.Driver@Example.test", "password": "long enough", "role": "driver", "name": "Nia"}
    created = await world.api("POST", "/api/users/", dispatcher, body=new)
    assert created.code == 201
    assert body(created) == {"id": body(created)["id"], "email": "new.driver@example.test", "name": "Nia",
                             "role": "driver"}
    again = await world.api("POST", "/api/users/", dispatcher, body={**new, "email": "NEW.driver@example.TEST"})
    refused(again, 409)
    assert (await login_token(world, "new.driver@example.test", "long enough")).code == 200


@pytest.mark.gen_test
async def test_user_creation_refuses_bad_input_and_non_dispatchers(world):
    dispatcher = await world.user("dispatcher")
    client = await world.user("client")
    good = {"email": "a@example.test", "password": "long enough", "role": "client"}
    refused(await world.api("POST", "/api/users/", client, body=good), 403)
    for bad in ({**good, "role": "admin"}, {**good, "password": "short"}, {**good, "email": "nope"},
                {**good, "password": 12345678}, {**good, "name": ["x"]}):
        r = await world.api("POST", "/api/users/", dispatcher, body=bad)
        refused(r, 400, bad)
    refused(await login_token(world, "a@example.test", "long enough"), 401)  # nothing half-made


# -- parcels -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_each_role_lists_exactly_the_parcels_it_may_see(world):
    owner, other_client = await world.user("client"), await world.user("client")
    driver, idle_driver = await world.user("driver"), await world.user("driver")
    dispatcher = await world.user("dispatcher")
    mine = await world.parcel(owner, driver)
    theirs = await world.parcel(other_client)

    def ids(response):
        return sorted(p["id"] for p in body(response))

    assert ids(await world.api("GET", "/api/parcels/", owner)) == [mine["_id"]]
    assert ids(await world.api("GET", "/api/parcels/", other_client)) == [theirs["_id"]]
    assert ids(await world.api("GET", "/api/parcels/", driver)) == [mine["_id"]]
    assert ids(await world.api("GET", "/api/parcels/", idle_driver)) == []
    assert ids(await world.api("GET", "/api/parcels/", dispatcher)) == sorted([mine["_id"], theirs["_id"]])


@pytest.mark.gen_test
async def test_a_parcel_you_may_not_see_is_404_like_a_missing_one(world):
    owner, stranger = await world.user("client"), await world.user("client")
    driver, other_driver = await world.user("driver"), await world.user("driver")
    parcel = await world.parcel(owner, driver)
    path = f"/api/parcels/{parcel['_id']}/"
    seen = body(await world.api("GET", path, owner))
    assert seen["id"] == parcel["_id"] and seen["status"] == "assigned" and seen["driver_id"] == driver.id
    assert seen["pickup"] == {"lat": 28.61, "lng": 77.23, "address": "India Gate"}
    assert seen["last_location"] is None and seen["created_at"].endswith("Z")
    assert (await world.api("GET", path, driver)).code == 200
    hidden = [await world.api("GET", path, stranger), await world.api("GET", path, other_driver),
              await world.api("GET", "/api/parcels/99999/", owner),
              await world.api("GET", f"/api/parcels/{parcel['_id']}/locations/", stranger)]
    assert [r.code for r in hidden] == [404] * 4
    assert len({r.body for r in hidden}) == 1


@pytest.mark.gen_test
async def test_creating_parcels(world):
    client, driver = await world.user("client"), await world.user("driver")
    dispatcher = await world.user("dispatcher")
    spot = {"lat": 28.6, "lng": 77.2, "address": "Somewhere"}
    mine = await world.api("POST", "/api/parcels/", client, body={"pickup": spot, "destination": spot})
    assert mine.code == 201
    assert body(mine)["owner_id"] == client.id and body(mine)["status"] == "pending"
    for_client = await world.api("POST", "/api/parcels/", dispatcher,
                                 body={"pickup": spot, "destination": spot, "owner_id": client.id})
    assert for_client.code == 201 and body(for_client)["owner_id"] == client.id
    refused(await world.api("POST", "/api/parcels/", dispatcher, body={"pickup": spot, "destination": spot}), 400)
    refused(await world.api("POST", "/api/parcels/", dispatcher,
                            body={"pickup": spot, "destination": spot, "owner_id": driver.id}), 400)
    refused(await world.api("POST", "/api/parcels/", driver, body={"pickup": spot, "destination": spot}), 403)
    for bad in ({"lat": 91, "lng": 0}, {"lat": "28", "lng": 77}, {"lat": True, "lng": 77}, None,
                {"lat": 1, "lng": 2, "address": "x" * 257}):
        r = await world.api("POST", "/api/parcels/", client, body={"pickup": bad, "destination": spot})
        assert r.code == 400 and body(r)["error"].startswith("pickup"), bad
    assert len(body(await world.api("GET", "/api/parcels/", client))) == 2  # nothing half-made


@pytest.mark.gen_test
async def test_assignment(world):
    client, driver = await world.user("client"), await world.user("driver")
    dispatcher = await world.user("dispatcher")
    parcel = await world.parcel(client)
    path = f"/api/parcels/{parcel['_id']}/assign/"
    refused(await world.api("POST", path, client, body={"driver_id": driver.id}), 403)
    refused(await world.api("POST", path, dispatcher, body={"driver_id": client.id}), 400)
    refused(await world.api("POST", path, dispatcher, body={"driver_id": "2"}), 400)
    assigned = await world.api("POST", path, dispatcher, body={"driver_id": driver.id})
    assert assigned.code == 200
    assert body(assigned)["status"] == "assigned" and body(assigned)["driver_id"] == driver.id
    done = await world.parcel(client, driver, status="delivered")
    late = await world.api("POST", f"/api/parcels/{done['_id']}/assign/", dispatcher, body={"driver_id": driver.id})
    refused(late, 409)


@pytest.mark.gen_test
async def test_status_lifecycle_and_who_may_move_it(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver)
    path = f"/api/parcels/{parcel['_id']}/status/"

    async def move(user, status):
        return await world.api("POST", path, user, body={"status": status})

    refused(await move(driver, "delivered"), 409)  # not from assigned
    refused(await move(client, "picked_up"), 403)
    refused(await move(driver, "flying"), 400)
    for status in ("picked_up", "in_transit", "delivered"):
        r = await move(driver, status)
        assert r.code == 200 and body(r)["status"] == status
    refused(await move(driver, "in_transit"), 409)

    cancellable = await world.parcel(client, driver)
    cancel = await world.api("POST", f"/api/parcels/{cancellable['_id']}/status/", client,
                             body={"status": "cancelled"})
    assert cancel.code == 200 and body(cancel)["status"] == "cancelled"
    moving = await world.parcel(client, driver, status="picked_up")
    too_late = await world.api("POST", f"/api/parcels/{moving['_id']}/status/", client, body={"status": "cancelled"})
    refused(too_late, 409)


@pytest.mark.gen_test
async def test_history_is_oldest_first(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    ws = await world.watch(parcel, driver)
    for i in range(world.app.config.location_sample_every * 2):
        ws.write_message(f'{{"type": "location_update", "lat": {10 + i}, "lng": 20}}')
        await ws.read_message()
    await world.app.hub.writer.flush()
    history = body(await world.api("GET", f"/api/parcels/{parcel['_id']}/locations/", client))["locations"]
    assert [p["lat"] for p in history] == [14, 19]
    assert history[0]["timestamp"] <= history[1]["timestamp"]
    ws.close()


# -- transport -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_cookie_sessions_need_the_xsrf_token_for_unsafe_methods(world):
    client = await world.user("client")
    cookies = await browser_login(world, client.email)
    spot = {"lat": 1, "lng": 2, "address": ""}
    payload = {"pickup": spot, "destination": spot}
    without = await world.api("POST", "/api/parcels/", headers={"Cookie": cookies["Cookie"]}, body=payload)
    refused(without, 403)
    with_token = await world.api("POST", "/api/parcels/", headers=cookies, body=payload)
    assert with_token.code == 201


@pytest.mark.gen_test
async def test_oversized_bodies_and_unknown_endpoints(world):
    client = await world.user("client")
    big = await world.api("POST", "/api/parcels/", client, raw=b'{"x": "' + b"a" * 70_000 + b'"}')
    refused(big, 413)
    missing = await world.api("GET", "/api/nothing/", client)
    assert missing.code == 404 and body(missing) == {"error": "no such API endpoint"}


@pytest.mark.gen_test
async def test_login_redirects_only_to_local_paths(world):
    client = await world.user("client")
    for target, expected in (("/parcels/1/track", "/parcels/1/track"), ("//evil.example/x", "/parcels"),
                             ("https://evil.example/", "/parcels")):
        http = AsyncHTTPClient()
        page = await http.fetch(f"http://127.0.0.1:{world.port}/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode()).group(1)
        cookie = page.headers["Set-Cookie"].split(";")[0]
        with pytest.raises(HTTPClientError) as caught:
            await http.fetch(HTTPRequest(
                f"http://127.0.0.1:{world.port}/login", method="POST", follow_redirects=False,
                body=f"_xsrf={xsrf}&email={client.email}&password={PASSWORD}&next={target}",
                headers={"Cookie": cookie},
            ))
        assert caught.value.code == 302
        assert caught.value.response.headers["Location"] == expected
