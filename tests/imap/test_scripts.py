"""Our own scripted IMAP tests (tests/imap/scripts, imaptest's format), one case per file."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Replay
from .scripted import script_paths

SCRIPTS = Path(__file__).with_name("scripts")


@pytest.mark.parametrize("script", script_paths(SCRIPTS), ids=lambda path: path.name)
def test_script(script: Path, replay: Replay) -> None:
    replay(script)
