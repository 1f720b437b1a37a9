"""The terminal simulator: single terminals, fleets, replays (docs/architecture.md, docs/replay.md)."""

from switch import compiled as _switch_compiled
from terminal_sim import compiled as _compiled

_switch_compiled.choose(_compiled.MODULES, _compiled.BUILT_FROM)
