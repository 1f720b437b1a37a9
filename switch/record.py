"""`Record`: the immutable typed records of the hot path (a request, a decision, a posting and
its detail, the changes and events a commit carries), as msgspec Structs.

A frozen dataclass sets each field through `object.__setattr__` in Python: building one of
ten fields cost ≈ 3 µs on the Intel VM, and a purchase builds about eighteen. A frozen Struct
is built in C (≈ 0.2 µs), is as immutable (assigning a field raises AttributeError), compares
and hashes by its fields, and reads its fields as fast as slots (docs/performance.md, "Records
as msgspec Structs"). `replace` is msgspec.structs.replace, the counterpart of
dataclasses.replace. Records stay plain data: no validation on construction, as before.
"""

from __future__ import annotations

import msgspec


class Record(msgspec.Struct, frozen=True):
    """Base of the frozen records: subclasses declare their fields as dataclasses do."""


replace = msgspec.structs.replace

__all__ = ["Record", "replace"]
