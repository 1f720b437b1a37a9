"""Where the rules, dialects and scenarios live: one function for every reader.

`$EUM_CONFIG_DIR` when set; else the repository's `config/` in a source checkout (an
editable install); else the copy of `config/` shipped inside the package as `switch/_config`
(pyproject.toml), so a plain `pip install .` finds its defaults too.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "EUM_CONFIG_DIR"


def config_dir() -> Path:
    configured = os.environ.get(ENV)
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[1] / "config"
    if (checkout / "programs.toml").is_file():
        return checkout
    return Path(__file__).resolve().parent / "_config"
