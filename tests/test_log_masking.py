"""What a log line may not carry (switch/domain.py, compiled, used by switch/ops/logs.py for
every line): secret keys dropped, a `pan` masked whatever its length, any run of 13–19 digits
masked to first 6 / last 4 wherever it stands (nested dicts and lists too), shorter digit
runs (an RRN) kept, and the line's other values untouched, in place."""

from __future__ import annotations

from switch.domain import SECRET_KEYS, mask_secrets, mask_value
from switch.ops import logs


def test_a_line_loses_its_secret_keys_and_every_pan_like_run_in_place():
    event = {"event": "message", "pan": "9410100000000011", "pin_block": "0123456789ABCDEF", "cvv": "123",
             "note": "card 9410100000000011 and 4111111111111111111 but not 41111111111111111111",
             "rrn": "000000006400", "amount": 1000, "latency": 0.25, "ok": True, "nothing": None,
             "detail": {"key": "00112233", "track2": "9410100000000011=2912", "pans": ["9410100000000011", 7]},
             "ids": ("1234567890123", "123456789012")}
    out = mask_secrets(None, "info", event)
    assert out is event
    assert event == {"event": "message", "pan": "941010******0011",
                     "note": "card 941010******0011 and 411111*********1111 but not 41111111111111111111",
                     "rrn": "000000006400", "amount": 1000, "latency": 0.25, "ok": True, "nothing": None,
                     "detail": {"key": "[redacted]", "track2": "[redacted]", "pans": ["941010******0011", 7]},
                     "ids": ["123456***0123", "123456789012"]}


def test_a_short_pan_is_masked_by_its_key_and_the_logs_module_uses_the_same_functions():
    assert mask_secrets(None, "info", {"pan": "12345678", "stan": "000042"}) == {"pan": "********", "stan": "000042"}
    assert {"pin", "pin_block", "track2", "cvv", "key", "lmk", "pvv", "components"} <= SECRET_KEYS
    assert (logs.mask_secrets, logs.mask_value, logs.SECRET_KEYS) == (mask_secrets, mask_value, SECRET_KEYS)
