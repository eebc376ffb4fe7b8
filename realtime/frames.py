"""A text message framed once as RFC 6455 bytes, so a broadcast is encoded and framed
once and the same bytes are written to every subscriber (a server's frames are not
masked, RFC 6455 §5.1). Tornado's `write_message` would build the frame again for each
socket and start a task for each write."""

from __future__ import annotations

import struct

FIN_TEXT = 0x81  # FIN bit and the text opcode


def text_frame(text: str) -> bytes:
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", FIN_TEXT, size) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", FIN_TEXT, 126, size) + payload
    return struct.pack("!BBQ", FIN_TEXT, 127, size) + payload
