"""A shop's parcel from start to end, as CONTRACT §11 promises (issue 20): created with an API
key, driven to delivery across a restart of the product, the recipient's three e-mails found at
a real SMTP server in order and each once, and every webhook at a local receiver verified with
its signing secret, each once."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import another_server, until
from tests.test_email import (  # noqa: F401 (pytest's fixtures, used by name)
    BUSINESS,
    RECIPIENT,
    config,
    drive_to_the_door,
    move,
    people,
    smtp,
)
from tests.test_integrations import Receiver, add_hook, make_key, new_parcel
from tests.test_proof import send_proof

EMAILS = ("Your parcel is out for delivery", "Your parcel is arriving soon", "Your parcel was delivered")


@pytest.mark.gen_test(timeout=90)
async def test_a_parcel_made_with_a_key_reaches_the_recipient_and_the_shop_across_a_restart(
        world, smtp, db_server):  # noqa: F811 (the fixture imported above)
    await world.app.outbox.stop(1.0)  # the product is the two servers below, one after the other
    receiver = Receiver()
    try:
        async with another_server(world, db_server) as first:
            who = await people(first)
            hook = await add_hook(first, who.dispatcher, receiver.url)
            key = (await make_key(first, who.dispatcher))["key"]
            parcel_id = (await new_parcel(first, key, who.client, recipient=RECIPIENT))["id"]
            assigned = await first.api("POST", f"/api/parcels/{parcel_id}/assign/", who.dispatcher,
                                       {"driver_id": who.driver.id})
            assert assigned.code == 200, assigned.body
            for status in ("picked_up", "in_transit"):
                await move(first, parcel_id, who.driver, status)
            await smtp.wait_for(1)
            await until(lambda: len(receiver.got) >= 4, within=10)  # created, assigned, picked up, in transit
        async with another_server(world, db_server) as second:  # restarted
            await drive_to_the_door(second, who, parcel_id)
            assert (await send_proof(second, parcel_id, who.driver, received_by="Asha")).code == 201
            await move(second, parcel_id, who.driver, "delivered")
            await smtp.wait_for(3)
            await until(lambda: len(receiver.got) >= 7, within=10)  # arriving, status changed, delivered
            await asyncio.sleep(1.0)  # the outbox looks every 0.2 s: a second copy of any would be here by now
    finally:
        receiver.stop()

    assert smtp.subjects() == [f"{subject} · {BUSINESS}" for subject in EMAILS]
    assert [to for _, to in smtp.envelopes] == [[RECIPIENT["email"]]] * 3
    told = receiver.events(hook["secret"])  # each verified with the hook's secret, as a shop would
    assert sorted(t["type"] for t in told) == sorted(["parcel.created", *["parcel.status_changed"] * 4,
                                                      "parcel.arriving", "parcel.delivered"])
    assert all(t["data"]["id"] == parcel_id for t in told)
    assert len({headers["Webhook-Id"] for headers, _, _ in receiver.got}) == 7  # each once
