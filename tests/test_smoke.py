import pytest

from tests.conftest import body, recv


@pytest.mark.gen_test
async def test_driver_location_reaches_client(world):
    client = await world.user("client")
    driver = await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    watcher = await world.watch(parcel, client)
    sender = await world.watch(parcel, driver)
    sender.write_message('{"type": "location_update", "lat": 28.6, "lng": 77.2}')
    got = await recv(watcher)
    assert got["location"] == {"lat": 28.6, "lng": 77.2, "address": ""}
    r = await world.api("GET", "/api/me/", client)
    assert body(r)["role"] == "client"
