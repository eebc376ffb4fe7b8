"""People (CONTRACT §10, docs/protocol.md "People"): listing, searching, adding, deactivating
and activating users, through the real server, sockets and database."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from devtools.process import RedisServer
from models import parcels, users
from models.access import may_drive, may_own_parcels
from tests.conftest import PASSWORD, World, body, recv, refused
from tests.helpers import another_server, expect_closed, expect_error, scene, subscribed


async def login(world: World, email: str, password: str = PASSWORD):
    return await world.api("POST", "/api/token/", body={"email": email, "password": password})


async def route_socket(world: World, driver, token: str | None = None):
    ws = await world.socket(None, token or world.token(driver), path="/ws/driver/")
    assert (await recv(ws))["type"] == "subscribed"
    return ws


async def ended(ws) -> None:
    await expect_error(ws, "session has ended")
    await expect_closed(ws, 4401)


def next_before(response) -> int | None:
    """The `before=` of a list's `Link: <…>; rel="next"`, None without one."""
    link = response.headers.get("Link")
    if link is None:
        return None
    url = re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1)
    return int(parse_qs(urlsplit(url).query)["before"][0])


# -- deactivating ends everything at once ------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_deactivating_a_driver_ends_their_tokens_cookie_and_sockets_and_leaves_their_parcels(world):
    s = await scene(world)
    tokens = body(await login(world, s.driver.email))
    route = await route_socket(world, s.driver)
    tracking = await subscribed(world, s.id, s.driver)
    socket_token = body(await world.page("/api/token/ws/", s.driver))["access"]
    assert (await world.page("/driver", s.driver)).code == 200

    answer = await world.api("POST", f"/api/users/{s.driver.id}/deactivate/", s.dispatcher)
    assert answer.code == 200, answer.body
    assert body(answer) == {"id": s.driver.id, "email": s.driver.email, "name": s.driver.name, "role": "driver",
                            "active": False}
    await ended(route)
    await ended(tracking)
    bearer = {"Authorization": f"Bearer {tokens['access']}"}
    refused(await world.api("GET", "/api/me/", headers=bearer), 401)
    refused(await world.api("POST", "/api/token/refresh/", body={"refresh": tokens["refresh"]}), 401)
    assert (await world.page("/driver", s.driver)).code == 302  # the old cookie: back to the login page
    refused(await world.page("/api/token/ws/", s.driver), 401)
    for token in (socket_token, tokens["access"]):  # a token issued before opens no socket
        ws = await world.socket(None, token, path="/ws/driver/")
        await expect_error(ws, "no longer valid")
        await expect_closed(ws, 4401)

    assert refused(await login(world, s.driver.email), 401) == "this account is deactivated"
    assert refused(await login(world, s.driver.email, "not the password"), 401) == "wrong email or password"
    page = await world.page("/login", method="POST", form={"email": s.driver.email, "password": PASSWORD})
    assert page.code == 200 and b"this account is deactivated" in page.body and "Set-Cookie" not in str(page.headers)

    parcel = await parcels.get_parcel(world.app.db, s.id)
    assert (parcel["driver_id"], parcel["status"]) == (s.driver.id, "in_transit")  # their parcels stay

    again = await world.api("POST", f"/api/users/{s.driver.id}/activate/", s.dispatcher)
    assert again.code == 200 and body(again)["active"] is True
    fresh = body(await login(world, s.driver.email))
    route = await route_socket(world, s.driver, fresh["access"])
    assert body(await world.api("GET", "/api/parcels/?active=1", headers={
        "Authorization": f"Bearer {fresh['access']}"}))[0]["id"] == s.id
    route.close()


@pytest.mark.gen_test(timeout=30)
async def test_deactivating_a_client_or_another_dispatcher_closes_their_tracking_and_board_sockets(world):
    s = await scene(world)
    watching = await subscribed(world, s.id, s.client)
    other = await world.user("dispatcher")
    board = await world.socket(None, world.token(other), path="/ws/dispatch/")
    assert (await recv(board))["type"] in ("board", "subscribed")
    for person in (s.client, other):
        assert (await world.api("POST", f"/api/users/{person.id}/deactivate/", s.dispatcher)).code == 200
    await ended(watching)
    await ended(board)
    refused(await world.api("GET", "/api/parcels/", other), 401)
    assert (await parcels.get_parcel(world.app.db, s.id))["owner_id"] == s.client.id


@pytest.mark.gen_test(timeout=60)
async def test_a_deactivation_on_one_process_closes_the_sockets_on_another(world, db_server):
    redis = RedisServer().start()
    try:
        async with another_server(world, db_server, broker_url=redis.url) as first, \
                another_server(world, db_server, broker_url=redis.url) as second:
            s = await scene(first)
            route = await route_socket(second, s.driver)
            watching = await subscribed(second, s.id, s.client)
            for person in (s.driver, s.client):
                assert (await first.api("POST", f"/api/users/{person.id}/deactivate/", s.dispatcher)).code == 200
            await ended(route)
            await ended(watching)
    finally:
        redis.kill()


# -- who may, and what a deactivated person cannot be given ------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_only_dispatchers_change_people_never_themselves_and_unknown_ids_are_404(world):
    s = await scene(world)
    for who in (s.client, s.driver):
        for path in (f"/api/users/{s.dispatcher.id}/deactivate/", f"/api/users/{s.client.id}/activate/"):
            refused(await world.api("POST", path, who), 403)
        refused(await world.api("GET", "/api/users/", who), 403)
    refused(await world.api("POST", f"/api/users/{s.driver.id}/deactivate/"), 401)
    refused(await world.api("GET", "/api/users/"), 401)
    assert refused(await world.api("POST", f"/api/users/{s.dispatcher.id}/deactivate/", s.dispatcher),
                   400) == "you cannot deactivate yourself"
    for action in ("deactivate", "activate"):
        refused(await world.api("POST", f"/api/users/999999/{action}/", s.dispatcher), 404)
    assert (await users.get_user(world.app.db, s.dispatcher.id)).active
    assert (await world.api("POST", f"/api/users/{s.dispatcher.id}/activate/", s.dispatcher)).code == 200
    stored = await users.get_user(world.app.db, s.client.id)
    assert stored.active and stored.session == s.client.session  # nobody refused changed anybody


@pytest.mark.gen_test(timeout=30)
async def test_a_deactivated_driver_gets_no_parcels_and_a_deactivated_client_none_made_for_them(world):
    s = await scene(world, status="assigned")
    waiting = await world.parcel(s.client)
    for person in (s.driver, s.client):
        assert (await world.api("POST", f"/api/users/{person.id}/deactivate/", s.dispatcher)).code == 200
    stored = await users.get_users(world.app.db, [s.driver.id, s.client.id])
    assert not may_drive(stored[s.driver.id]) and not may_own_parcels(stored[s.client.id])
    assign = f"/api/parcels/{waiting['_id']}/assign/"
    refused(await world.api("POST", assign, s.dispatcher, {"driver_id": s.driver.id}), 400)
    form = await world.page(f"/dispatch/parcels/{waiting['_id']}/assign", s.dispatcher, "POST",
                            {"driver": s.driver.email})
    assert form.code == 400
    point = {"lat": 28.6, "lng": 77.2, "address": "A"}
    refused(await world.api("POST", "/api/parcels/", s.dispatcher,
                            {"owner_id": s.client.id, "pickup": point, "destination": point}), 400)
    stored = await parcels.get_parcel(world.app.db, waiting["_id"])
    assert (stored["status"], stored["driver_id"]) == ("pending", None)  # the refusals stored nothing
    assert await db_parcels(world) == 2
    assert s.driver.id not in [u.id for u in await world.app.drivers.users()]  # not offered on /dispatch
    dispatch = await world.page("/dispatch", s.dispatcher)
    assert s.driver.email.encode() not in dispatch.body.split(b"<datalist")[1].split(b"</datalist>")[0]
    assert (await world.api("POST", f"/api/users/{s.driver.id}/activate/", s.dispatcher)).code == 200
    assert (await world.api("POST", assign, s.dispatcher, {"driver_id": s.driver.id})).code == 200


async def db_parcels(world: World) -> int:
    return await world.app.db.last_id("parcels")


# -- the list: search and paging -----------------------------------------------------------------


async def cast(world: World) -> dict[str, object]:
    names = ["Priya Sharma", "Ravi Kumar", "Meena Sharma-Rao", "Arjun Mehta", "Sharmila Das"]
    people = {}
    for n, name in enumerate(names):
        email = f"{name.split()[0].lower()}.{n}@fleet.example"
        people[name] = await world.user("driver", email=email, name=name)
    people["client"] = await world.user("client", email="sharma.shop@example.test", name="Asha Client")
    people["boss"] = await world.user("dispatcher", name="Dana Boss")
    return people


@pytest.mark.gen_test(timeout=30)
async def test_the_list_searches_names_and_emails_by_role_newest_first(world):
    people = await cast(world)
    boss = people["boss"]

    async def listed(query: str) -> list[str]:
        response = await world.api("GET", f"/api/users/{query}", boss)
        assert response.code == 200, response.body
        return [p["name"] for p in body(response)]

    assert await listed("?role=driver") == ["Sharmila Das", "Arjun Mehta", "Meena Sharma-Rao", "Ravi Kumar",
                                            "Priya Sharma"]
    assert await listed("?role=driver&q=sharm") == ["Sharmila Das", "Meena Sharma-Rao", "Priya Sharma"]
    assert await listed("?q=sharma") == ["Asha Client", "Meena Sharma-Rao", "Priya Sharma"]  # every role
    assert await listed("?q=Priya%20SHAR") == ["Priya Sharma"]  # every word, any case
    assert await listed("?q=rao") == ["Meena Sharma-Rao"]
    assert await listed("?q=ravi.1@fleet.example") == ["Ravi Kumar"]  # a whole e-mail, past the indexed prefix
    assert await listed("?q=ravi.1@fleet.exampleX") == []
    assert await listed("?q=kumar%20priya") == []
    assert await listed("?role=dispatcher") == ["Dana Boss"]
    assert await listed("?role=client&q=sharma") == ["Asha Client"]
    first = body(await world.api("GET", "/api/users/?role=driver", boss))[0]
    assert first == {"id": people["Sharmila Das"].id, "email": "sharmila.4@fleet.example", "name": "Sharmila Das",
                     "role": "driver", "active": True}
    for query, message in [("?role=admin", "role must be one of"), ("?limit=0", "limit"), ("?limit=501", "limit"),
                           ("?before=x", "before"), ("?q=" + "a" * 255, "q must be at most")]:
        assert message in refused(await world.api("GET", f"/api/users/{query}", boss), 400, query)


@pytest.mark.gen_test(timeout=60)
async def test_the_list_pages_with_a_next_link_until_everyone_is_seen_once(world):
    boss = await world.user("dispatcher")
    made = [await world.user("client" if n % 3 else "driver", name=f"Person {n}") for n in range(23)]
    seen: list[int] = []
    before = None
    while True:
        response = await world.api("GET", "/api/users/?limit=5" + (f"&before={before}" if before else ""), boss)
        page = [p["id"] for p in body(response)]
        seen += page
        before = next_before(response)
        if before is None:
            break
        assert len(page) == 5 and before == page[-1]
        assert "limit=5" in response.headers["Link"]
    assert seen == sorted([boss.id, *(u.id for u in made)], reverse=True)
    drivers = body(await world.api("GET", "/api/users/?role=driver&q=person&limit=3", boss))
    assert [p["name"] for p in drivers] == ["Person 21", "Person 18", "Person 15"]
    people = await users.find_people(world.app.db, role="driver", search="person", limit=3, before=drivers[-1]["id"])
    assert [u.name for u in people.users] == ["Person 12", "Person 9", "Person 6"] and people.next_before is not None


@pytest.mark.gen_test(timeout=30)
async def test_users_stored_before_search_keys_are_found_after_the_upgrade(world):
    db = world.app.db
    old = await world.user("driver", email="old.timer@example.test", name="Old Timer")
    await db.users.update_one({"_id": old.id}, {"$unset": {"search": ""}})
    await db.counters.update_one({"_id": "schema"}, {"$set": {"value": 2}})
    assert (await users.find_people(db, search="timer")).users == []
    await db.ensure_indexes()
    assert [u.id for u in (await users.find_people(db, search="timer")).users] == [old.id]
    assert (await db.counters.find_one({"_id": "schema"}))["value"] == 3


def test_search_keys_are_the_prefixes_of_the_words_someone_is_found_by():
    keys = users.search_keys("ravi.k+vans@fleet.example", "Ravi Kumar-Singh")
    for key in ("r", "ravi", "k", "kumar", "kumar-sing", "singh", "vans", "ravi.k+van"):
        assert key in keys, key
    assert all(len(key) <= users.SEARCH_PREFIX for key in keys)
    assert "fleet" not in keys and "ravi.k+vans" not in keys  # the domain is not a word; ten characters at most


def test_an_account_is_checked_field_by_field_in_the_forms_order():
    values, problems = users.check_account(" Nia@Example.TEST ", "long enough", "driver", "Nia")
    assert problems == {} and values == {"email": "nia@example.test", "password": "long enough", "role": "driver",
                                         "name": "Nia"}
    _, problems = users.check_account("nope", "short", "admin", "x" * 101)
    assert list(problems) == ["email", "password", "role", "name"]
    assert problems["password"] == "password must be at least 8 characters"


# -- the page, over HTTP ---------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_the_page_adds_a_person_keeping_what_was_typed_when_a_field_is_wrong(world):
    boss = await world.user("dispatcher", name="Dana Boss")
    taken = await world.user("client", email="taken@example.test")
    assert (await world.page("/dispatch/people", taken)).code == 403
    form = {"name": "Nia Driver", "email": "taken@example.test", "role": "driver", "password": "long enough"}
    page = await world.page("/dispatch/people", boss, "POST", form)
    assert page.code == 400
    html = page.body.decode()
    assert 'id="new-email-error">A user with that email exists already.</p>' in html
    assert 'value="Nia Driver"' in html and 'value="taken@example.test"' in html
    assert '<option value="driver" selected>' in html and "long enough" not in html  # the password is not echoed
    assert 'aria-invalid="true" aria-describedby="new-email-error" autofocus' in html
    assert len((await users.find_people(world.app.db, search="nia")).users) == 0

    page = await world.page("/dispatch/people", boss, "POST", {**form, "email": "nia@example.test"})
    assert page.code == 302
    made = (await users.find_by_email(world.app.db, "nia@example.test"))[0]
    assert page.headers["Location"] == f"/dispatch/people?role=driver&added={made.id}#person-{made.id}"
    listed = (await world.page(f"/dispatch/people?role=driver&added={made.id}", boss)).body.decode()
    assert "Added Nia Driver (nia@example.test) as a driver." in listed
    assert f'id="person-{made.id}"' in listed


@pytest.mark.gen_test(timeout=30)
async def test_the_pages_deactivate_asks_first_then_ends_the_sessions(world):
    s = await scene(world)
    watching = await subscribed(world, s.id, s.client)
    asked = await world.page(f"/dispatch/people/{s.client.id}/deactivate", s.dispatcher, "POST",
                             {"role": "client", "q": "client"})
    assert asked.code == 200 and b"Yes, deactivate" in asked.body and b'name="confirmed" value="yes"' in asked.body
    assert (await users.get_user(world.app.db, s.client.id)).active  # asking changed nothing
    done = await world.page(f"/dispatch/people/{s.client.id}/deactivate", s.dispatcher, "POST",
                            {"role": "client", "q": "client", "confirmed": "yes"})
    assert done.code == 302
    back = f"/dispatch/people?role=client&q=client&changed={s.client.id}"
    assert done.headers["Location"] == f"{back}#person-{s.client.id}"
    await ended(watching)
    listed = (await world.page(back, s.dispatcher)).body.decode()
    assert "is deactivated and was logged out everywhere" in listed and "Deactivated" in listed
    assert (await world.page(f"/dispatch/people/{s.client.id}/activate", s.dispatcher, "POST")).code == 302
    assert (await users.get_user(world.app.db, s.client.id)).active
    assert (await world.page(f"/dispatch/people/{s.dispatcher.id}/deactivate", s.dispatcher, "POST",
                             {"confirmed": "yes"})).code == 400
    assert (await world.page(f"/dispatch/people/{s.driver.id}/deactivate", s.driver, "POST",
                             {"confirmed": "yes"})).code == 403
    assert (await world.page("/dispatch/people/999999/activate", s.dispatcher, "POST")).code == 404
    assert (await world.page("/dispatch/people?role=admin", s.dispatcher)).code == 400
    refused_xsrf = await world.page(f"/dispatch/people/{s.driver.id}/deactivate", s.dispatcher, "POST",
                                    {"confirmed": "yes"}, xsrf=False)
    assert refused_xsrf.code == 403 and (await users.get_user(world.app.db, s.driver.id)).active
    assert json.loads((await world.api("GET", "/api/users/?role=client", s.dispatcher)).body)[0]["active"]


@pytest.mark.gen_test(timeout=30)
async def test_activating_someone_active_already_ends_nothing(world):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    again = await world.api("POST", f"/api/users/{s.client.id}/activate/", s.dispatcher)
    assert again.code == 200 and body(again)["active"] is True
    assert (await world.api("GET", "/api/me/", s.client)).code == 200  # the same session goes on
    watcher.write_message(json.dumps({"type": "location_update", "lat": 28.6, "lng": 77.2}))
    assert (await recv(watcher))["type"] == "error"  # a client may not send: the socket is still open
