"""The terminal simulator's compiled modules: which they are. Standard library only (setup.py
reads this file on its own, before anything is installed).

Where the install found a C compiler, `pip install -e .` compiles these modules with mypyc, in
one group with the switch's and the HSM's (the shared library `switch._hot`: setup.py): what a
simulated terminal runs for each transaction without I/O, the request builder (terminal.py)
and its DUKPT security (security.py: key registers, PIN block, MACs). The fleet's sockets and
scheduling stay Python. The `.py` files stay the reference: `EUM_PURE_PYTHON=1` loads them
(terminal_sim/__init__.py asks switch.compiled.choose for this group), and
tests/test_compiled.py runs the terminal security and future-key tests on both builds.
"""

from __future__ import annotations

from pathlib import Path

# Written by setup.py beside this file when it compiles: each listed module's source digest.
BUILT_FROM = Path(__file__).with_name("compiled-sources.txt")

MODULES = (
    "terminal_sim.terminal",
    "terminal_sim.security",
)
