"""results/README.md's Python snippets run exactly as printed (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
SNIPPETS = re.findall(r"```python\n(.*?)```", (REPO / "results" / "README.md").read_text(), flags=re.S)


def test_there_are_snippets() -> None:
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("code", SNIPPETS, ids=[s.split("\n")[0] for s in SNIPPETS])
def test_snippet_runs_as_printed(code: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(REPO)
    exec(compile(code, "results/README.md", "exec"), {"__name__": "__snippet__"})
    assert capsys.readouterr().out.strip()  # every snippet shows something
