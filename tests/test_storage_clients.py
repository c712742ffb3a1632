"""The storage clients' HTTP session: proxy variables are honoured, and not re-read when there are none."""

from __future__ import annotations

import pytest

from batchyard.storage.account import _client_kwargs


def _session() -> object:
    return _client_kwargs()["transport"].session


def test_without_proxy_variables_the_environment_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    session = _session()
    assert session.trust_env is False  # type: ignore[attr-defined]
    assert session.verify == "/etc/ssl/certs/ca-certificates.crt"  # type: ignore[attr-defined]


def test_with_a_proxy_variable_requests_keeps_its_per_url_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    session = _session()
    assert session.trust_env is True  # type: ignore[attr-defined]
