"""Media settings from `CASCADE_*` variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.media.config import MediaSettings
from app.media.errors import human_bytes


def test_defaults_match_the_model_and_the_issue() -> None:
    settings = MediaSettings()
    assert settings.image_max_pixels == 1280 * 32 * 32  # at most 1280 visual tokens per image
    assert settings.image_min_pixels == 4 * 32 * 32
    assert settings.image_max_bytes == 20 * 1024 * 1024
    assert (settings.request_max_images, settings.fetch_max_redirects) == (16, 5)
    assert settings.fetch_allow_hosts == [] and settings.local_image_dirs == []
    assert settings.image_ttl_seconds == 30 * 86_400
    assert settings.file_max_bytes("vision") == settings.file_max_bytes_vision
    assert settings.file_max_bytes("batch") == settings.file_max_bytes_batch


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_FETCH_ALLOW_HOSTS", "nas.lan, 192.168.1.0/24 ,*.home.arpa")
    monkeypatch.setenv("CASCADE_FETCH_DENY_HOSTS", "ads.example.com")
    monkeypatch.setenv("CASCADE_LOCAL_IMAGE_DIRS", "/srv/photos,/mnt/nas/pictures")
    settings = MediaSettings()
    assert settings.fetch_allow_hosts == ["nas.lan", "192.168.1.0/24", "*.home.arpa"]
    assert settings.fetch_deny_hosts == ["ads.example.com"]
    assert settings.local_image_dirs == [Path("/srv/photos"), Path("/mnt/nas/pictures")]


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("CASCADE_FETCH_ALLOW_HOSTS", "nas.lan,bad host", "not a host name"),
        ("CASCADE_LOCAL_IMAGE_DIRS", "relative/photos", "must be absolute"),
        ("CASCADE_IMAGE_MIN_PIXELS", "2000000", "must not exceed CASCADE_IMAGE_MAX_PIXELS"),
        ("CASCADE_IMAGE_MAX_PIXELS", "100", "greater than or equal to 1024"),
    ],
)
def test_bad_values_are_refused_at_start(
    variable: str, value: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=fragment):
        MediaSettings()


@pytest.mark.parametrize(
    ("count", "text"),
    [(20 * 1024 * 1024, "20 MB"), (1536, "1.5 KB"), (100_000, "97.7 KB"), (512, "512 bytes")],
)
def test_sizes_read_naturally(count: int, text: str) -> None:
    assert human_bytes(count) == text
