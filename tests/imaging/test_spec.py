"""Spec validation and the loose parameter parsing shared by transforms and the CLI."""

from __future__ import annotations

import pytest

from connector.imaging import CropMode, InvalidSpecError, PhotoSpec, parse_byte_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (10240, 10240),
        ("10240", 10240),
        ("10KB", 10240),
        ("10 KB", 10240),
        ("10 kb", 10240),
        ("10K", 10240),
        ("4 MiB", 4 * 1024 * 1024),
        ("1.5 KB", 1536),
        ("100 B", 100),
    ],
)
def test_parse_byte_size(text: object, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "10 XB", "-5", True, 1.5, None])
def test_parse_byte_size_rejects(bad: object) -> None:
    with pytest.raises(InvalidSpecError, match="max_bytes"):
        parse_byte_size(bad)


def test_from_params_coerces_strings() -> None:
    spec = PhotoSpec.from_params(
        {
            "size": "120",
            "max_bytes": "20 KB",
            "crop": "FACE",
            "margin": "25",
            "upscale": "true",
            "max_input_bytes": "5 MB",
        }
    )
    assert spec == PhotoSpec(size=120, max_bytes=20480, crop=CropMode.FACE, margin=25, upscale=True, limits=spec.limits)
    assert spec.limits.max_input_bytes == 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"size": 8}, "size"),
        ({"size": "big"}, "size"),
        ({"max_bytes": 100}, "max_bytes"),
        ({"max_bytes": 5_000_000}, "max_bytes"),
        ({"margin": 0}, "margin"),
        ({"margin": 51}, "margin"),
        ({"crop": "left"}, "crop"),
        ({"min_quality": 80, "max_quality": 70}, "max_quality"),
        ({"max_quality": 100}, "max_quality"),
        ({"colour": "red"}, "colour"),
        ({"upscale": "maybe"}, "upscale"),
    ],
)
def test_bad_params_name_the_key(params: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        PhotoSpec.from_params(params)
    assert caught.value.key == key


def test_crop_accepts_plain_strings() -> None:
    assert PhotoSpec(crop="face").crop is CropMode.FACE  # type: ignore[arg-type]
