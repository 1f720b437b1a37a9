"""Pure bytes <-> fields: framing, the dialect codec, the payShield envelope, host tables."""
