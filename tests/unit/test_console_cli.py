"""``parascribe console``: prints the console's URL and opens it; the local key travels in the fragment only."""

from __future__ import annotations

from pathlib import Path

import pytest

from parascribe import cli
from parascribe.local import stack


def _opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    return opened


def test_the_local_console_opens_with_the_stacks_key_in_the_fragment(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.delenv("PARASCRIBE_API_URL", raising=False)
    state = stack.StackState(home=str(tmp_path), project="p", pubsub_host="h:1", storage_host="h:2",
                             ports={"api": 8123}, api_key="k/y+z")
    monkeypatch.setattr(stack, "running_state", lambda home=None: state)
    opened = _opened(monkeypatch)
    assert cli.main(["console"]) == 0
    url = capsys.readouterr().out.strip()
    assert url == "http://127.0.0.1:8123/console/#key=k%2Fy%2Bz" and opened == [url]


def test_a_deployment_console_never_carries_a_key(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARASCRIBE_API_URL", "https://api.example.com/")
    monkeypatch.setenv("PARASCRIBE_API_KEY", "secret")
    opened = _opened(monkeypatch)
    assert cli.main(["console", "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == "https://api.example.com/console/" and opened == []


def test_without_a_stack_it_says_how_to_start_one(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PARASCRIBE_API_URL", raising=False)
    monkeypatch.setattr(stack, "running_state", lambda home=None: None)
    assert cli.main(["console"]) == 1
    assert "parascribe up --detach" in capsys.readouterr().err
