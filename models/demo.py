"""Demo data for a first start: a client, two drivers, a dispatcher, three parcels around New Delhi."""

from __future__ import annotations

from datetime import timedelta

from models import locations, parcels, users
from models.db import Database, utcnow

PASSWORD = "demo-pass"
ACCOUNTS = [
    ("client@demo.test", "client", "Asha Client"),
    ("driver@demo.test", "driver", "Ravi Driver"),
    ("driver2@demo.test", "driver", "Meena Driver"),
    ("dispatcher@demo.test", "dispatcher", "Dev Dispatcher"),
]
CONNAUGHT_PLACE = {"lat": 28.6315, "lng": 77.2167, "address": "Connaught Place, New Delhi"}
SAKET = {"lat": 28.5245, "lng": 77.2066, "address": "Saket, New Delhi"}
INDIA_GATE = {"lat": 28.6129, "lng": 77.2295, "address": "India Gate, New Delhi"}
HAUZ_KHAS = {"lat": 28.5494, "lng": 77.2001, "address": "Hauz Khas, New Delhi"}
KAROL_BAGH = {"lat": 28.6519, "lng": 77.1909, "address": "Karol Bagh, New Delhi"}
LAJPAT_NAGAR = {"lat": 28.5677, "lng": 77.2433, "address": "Lajpat Nagar, New Delhi"}


def logins() -> list[tuple[str, str, str]]:
    return [(email, PASSWORD, role) for email, role, _ in ACCOUNTS]


async def present(db: Database) -> bool:
    return await users.find_by_email(db, ACCOUNTS[0][0]) is not None


async def create_demo_data(db: Database, password_hash: str) -> bool:
    """Create the demo accounts and parcels unless they exist; True if created. Every
    account's password is PASSWORD, whose hash the caller makes (`auth.passwords`)."""
    if await present(db):
        return False
    made = {}
    for email, role, name in ACCOUNTS:
        try:
            made[email] = await users.create_user(db, email=email, password_hash=password_hash, role=role, name=name)
        except users.EmailTaken:
            made[email] = (await users.find_by_email(db, email))[0]
    client, driver, driver2 = made["client@demo.test"], made["driver@demo.test"], made["driver2@demo.test"]

    await parcels.create_parcel(db, owner_id=client.id, pickup=CONNAUGHT_PLACE, destination=SAKET)

    moving = await parcels.create_parcel(db, owner_id=client.id, pickup=INDIA_GATE, destination=HAUZ_KHAS)
    await parcels.assign_driver(db, moving["_id"], driver.id)
    for status in ("picked_up", "in_transit"):
        await parcels.set_status(db, moving["_id"], status)
    start = utcnow() - timedelta(minutes=4)
    path = [(28.6129, 77.2295, ""), (28.6050, 77.2250, ""), (28.5960, 77.2190, ""),
            (28.5870, 77.2130, "Lodhi Road, New Delhi")]
    await locations.store(db, [
        locations.sample(moving["_id"], driver.id, {"lat": lat, "lng": lng, "address": address},
                         start + timedelta(minutes=i))
        for i, (lat, lng, address) in enumerate(path)
    ])

    waiting = await parcels.create_parcel(db, owner_id=client.id, pickup=KAROL_BAGH, destination=LAJPAT_NAGAR)
    await parcels.assign_driver(db, waiting["_id"], driver2.id)
    return True
