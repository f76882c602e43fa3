"""README.md's shell commands, read the way a user copies them (tests/test_readme.py runs
them; other tests find their own examples there)."""

from __future__ import annotations

import re

from runners.config.paths import PROJECT_ROOT

COMMAND = "python -m runners.run"


def readme_lines() -> list[str]:
    """Every line of README.md's bash blocks, in order, a line continued by ``\\`` joined."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def readme_commands(command: str = COMMAND) -> list[str]:
    """Each ``python -m runners.run ...`` (or ``command``) in README.md's bash blocks, in order."""
    parts = (part.strip() for line in readme_lines() for part in line.split("&&"))
    return [part for part in parts if part.startswith(command)]
