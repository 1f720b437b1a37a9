"""eum-switch: the payment switch (see docs/architecture.md for the flow)."""

from switch import compiled as _compiled

_compiled.choose()
