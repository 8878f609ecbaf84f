"""MINIMAX_BASE_URL in every form people copy it in reaches the same endpoints (issue 15.2)."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.minimax_url import normalize_base_url

CASES = [
    ("https://api.minimax.io", "https://api.minimax.io"),
    ("https://api.minimax.io/", "https://api.minimax.io"),
    ("https://api.minimax.io/v1", "https://api.minimax.io"),
    ("https://api.minimax.io/v1/", "https://api.minimax.io"),
    ("https://api.minimax.io/anthropic", "https://api.minimax.io"),
    ("https://api.minimax.io/anthropic/", "https://api.minimax.io"),
    ("https://api.minimax.io/anthropic/v1", "https://api.minimax.io"),
    ("https://api.minimax.io/anthropic/v1/messages", "https://api.minimax.io"),
    ("https://api.minimax.io/v1/chat/completions", "https://api.minimax.io"),
    ("https://api.minimaxi.com", "https://api.minimaxi.com"),
    ("https://api.minimaxi.com/v1", "https://api.minimaxi.com"),
    ("https://api.minimaxi.com/anthropic/", "https://api.minimaxi.com"),
    ("api.minimax.io/v1", "https://api.minimax.io"),
    ("  https://api.minimax.io/V1  ", "https://api.minimax.io"),
    ("http://127.0.0.1:8090/anthropic", "http://127.0.0.1:8090"),
    ("https://proxy.example/minimax/v1", "https://proxy.example/minimax"),
    ("https://proxy.example/minimax", "https://proxy.example/minimax"),
]


@pytest.mark.parametrize(("given", "root"), CASES, ids=[c[0].strip() for c in CASES])
def test_every_documented_form_normalises_to_the_root(given: str, root: str) -> None:
    assert normalize_base_url(given) == root


@pytest.mark.parametrize("bad", ["", "   ", "ftp://api.minimax.io", "https://"])
def test_a_base_url_that_is_no_url_is_refused_with_the_setting_named(bad: str) -> None:
    with pytest.raises(ValueError, match="MINIMAX_BASE_URL"):
        normalize_base_url(bad)


def test_settings_hold_the_root_whatever_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIMAX_BASE_URL", "https://api.minimax.io/v1/")
    assert Settings().minimax_base_url == "https://api.minimax.io"
