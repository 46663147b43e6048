"""Durations (Slurm's formats plus 90s/10m/2h/1d) and memory sizes."""

from __future__ import annotations

import pytest

from skyport.units import format_duration, parse_duration_s, parse_mem_mb


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10 * 60),  # a bare number is minutes, as in sbatch
        ("05:30", 5 * 60 + 30),  # MM:SS
        ("01:00:00", 3600),  # HH:MM:SS
        ("1-00", 86400),  # D-HH
        ("1-02", 86400 + 2 * 3600),
        ("1-02:03", 86400 + 2 * 3600 + 3 * 60),  # D-HH:MM
        ("1-02:03:04", 86400 + 2 * 3600 + 3 * 60 + 4),  # D-HH:MM:SS
        ("0-05", 5 * 3600),  # zero days: the field after "-" is still hours
        ("0-01:30", 3600 + 30 * 60),
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5h", 5400),
        (" 2h ", 7200),
    ],
)
def test_duration_forms(text: str, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


ZERO_DURATIONS = ["0", "00:00", "0-00", "0s", "0d", "0.4s"]  # "0.4s" rounds to zero
BAD_DURATIONS = ["", "abc", "-5", "1-", "-1", "10:", ":10", "1:2:3:4", "1-2-3", "10x", "h"]
BAD_DURATIONS += ["1.5", "1-1:2:3:4", "10 m", "1e3", "ten"]


@pytest.mark.parametrize("text", ZERO_DURATIONS + BAD_DURATIONS)
def test_duration_rejects_zero_and_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("512", 512),  # a bare number is MB
        ("512M", 512),
        ("512m", 512),
        ("512MB", 512),
        ("2G", 2048),
        ("2GB", 2048),
        ("1.5G", 1536),
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("100K", 1),  # rounded up: never less than asked for
        ("1500K", 2),
        ("0.5", 1),
    ],
)
def test_memory_forms(text: str, mb: int) -> None:
    assert parse_mem_mb(text) == mb


@pytest.mark.parametrize(
    "text", ["", "0", "0G", "abc", "2X", "G", "-1G", "1.5.2G", "512B", "2 G", "1e3", "2GiB"]
)
def test_memory_rejects_zero_and_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mem_mb(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (59, "00:00:59"), (3661, "01:01:01"), (86400 + 2 * 3600, "1-02:00:00")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 3600, 86399, 86400, 90061, 366 * 86400])
def test_formatted_duration_parses_back(seconds: int) -> None:
    assert parse_duration_s(format_duration(seconds)) == seconds
