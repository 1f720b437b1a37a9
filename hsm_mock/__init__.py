"""The software HSM (payShield-style host commands): see docs/hsm.md."""

from hsm_mock import compiled as _compiled
from switch import compiled as _switch_compiled

_switch_compiled.choose(_compiled.MODULES, _compiled.BUILT_FROM)
