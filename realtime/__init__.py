"""The live side: validating socket messages, per-parcel fan-out, and the broker between processes."""
