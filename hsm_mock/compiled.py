"""The software HSM's compiled modules: which they are. Standard library only (setup.py reads
this file on its own, before anything is installed).

Where the install found a C compiler, `pip install -e .` compiles these modules with mypyc, in
one group with the switch's and the terminal's (the shared library `switch._hot`: setup.py,
switch/compiled.py), so their calls into switch.wire (the payShield field reader) are direct. They
are the command processor and everything it runs per command without I/O: the key caches, the
crypto wrappers, DUKPT, PIN blocks, card verification values, the LMK. The service (sockets,
threads, the audit log) stays Python. The `.py` files stay the reference: `EUM_PURE_PYTHON=1`
loads them (hsm_mock/__init__.py asks switch.compiled.choose for this group), and
tests/test_compiled.py runs the HSM's command, crypto and PIN tests on both builds. `eum hsm`'s
`hsm_listening` line says how many of them run compiled (`compiled`, `N/M`).
"""

from __future__ import annotations

from pathlib import Path

# Written by setup.py beside this file when it compiles: each listed module's source digest.
BUILT_FROM = Path(__file__).with_name("compiled-sources.txt")

MODULES = (
    "hsm_mock.keycache",
    "hsm_mock.crypto",
    "hsm_mock.dukpt",
    "hsm_mock.pinblock",
    "hsm_mock.cardverify",
    "hsm_mock.lmk",
    "hsm_mock.commands",
)
