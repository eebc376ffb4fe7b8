"""Log in as the demo driver and client, send a few positions, and watch them arrive.

    python examples/drive_and_watch.py [http://127.0.0.1:8000]

Nothing here but an HTTP client and a WebSocket client (Tornado's): the same steps a
phone app or an integration would take against a server started with `make run`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

PASSWORD = "demo-pass"


async def login(base: str, email: str) -> str:
    response = await AsyncHTTPClient().fetch(f"{base}/api/token/", method="POST",
                                             body=json.dumps({"email": email, "password": PASSWORD}))
    return json.loads(response.body)["access"]


async def main(base: str) -> None:
    driver, client = await login(base, "driver@demo.test"), await login(base, "client@demo.test")
    response = await AsyncHTTPClient().fetch(f"{base}/api/parcels/", headers={"Authorization": f"Bearer {driver}"})
    parcel = next(p for p in json.loads(response.body) if p["status"] in ("picked_up", "in_transit"))
    socket_base = "ws" + base[4:] if base.startswith("http") else base
    host = urlsplit(socket_base).netloc
    print(f"parcel {parcel['id']}: {parcel['pickup']['address']} -> {parcel['destination']['address']} ({host})")

    def url(token: str) -> str:
        return f"{socket_base}/ws/tracking/?parcel_id={parcel['id']}&token={token}"

    watcher = await websocket_connect(url(client))
    phone = await websocket_connect(url(driver))
    print("client:", json.loads(await watcher.read_message())["type"])
    print("driver:", json.loads(await phone.read_message())["type"])
    for step in range(3):
        lat, lng = round(28.58 - step * 0.004, 5), round(77.21 - step * 0.002, 5)
        phone.write_message(json.dumps({"type": "location_update", "lat": lat, "lng": lng,
                                        "address": f"Stop {step + 1}", "parcel_id": parcel["id"]}))
        while True:  # skip the snapshot of the last known position sent on connect
            seen = json.loads(await asyncio.wait_for(watcher.read_message(), 5))
            if seen["type"] == "location_update" and seen["location"]["lat"] == lat:
                break
        print(f"client sees the truck at {seen['location']['lat']}, {seen['location']['lng']} "
              f"({seen['location']['address']}) at {seen['timestamp']}")
        await asyncio.sleep(0.2)
    phone.close()
    watcher.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:8000"))
