"""``python -m hidiff bench``: the README's main job, its options and its defaults."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hidiff.bench import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hidiff", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_bench_help_lists_the_options_and_the_defaults_per_device():
    result = run("bench", "--help")
    assert result.returncode == 0
    for option in ("--size", "--model", "--steps", "--schedule-size", "--configs", "--json", "--chart", "--cpu"):
        assert option in result.stdout
    assert "on a CPU: --size 512x512" in " ".join(result.stdout.split())


def test_anything_else_prints_the_usage():
    result = run("frobnicate")
    assert result.returncode == 2 and result.stderr.startswith("usage: python -m hidiff bench")


def test_missing_comfyui_is_a_clear_message_not_a_traceback(tmp_path):
    result = run("bench", COMFYUI_PATH=str(tmp_path))
    assert result.returncode == 2
    assert f"ComfyUI not found at {tmp_path}" in result.stderr and "Traceback" not in result.stderr


def test_cpu_defaults_are_small_and_gpu_defaults_are_the_headline_size():
    assert cli.CPU_DEFAULTS.size == (512, 512) and cli.CPU_DEFAULTS.schedule_size[0] <= 256
    assert cli.GPU_DEFAULTS.size == (1024, 1024) and cli.GPU_DEFAULTS.repeats > 1


@pytest.mark.parametrize(
    ("text", "size"), [("1024x768", (1024, 768)), ("512", (512, 512)), ("2048*1024", (2048, 1024))]
)
def test_sizes_are_width_by_height_in_pixels(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["1000x1000x8", "abc", "0x512", "513x512"])
def test_bad_sizes_name_the_expected_form(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_configs_run_in_canonical_order_and_unknown_ones_are_named():
    assert cli.parse_configs("both,off") == ["off", "both"]
    assert cli.parse_configs("msw-native,off,msw") == ["off", "msw", "msw-native"]
    assert cli.build_parser().parse_args([]).configs == ["off", "msw", "raunet", "both"]  # msw-native on request
    with pytest.raises(argparse.ArgumentTypeError, match="choose from off,msw,msw-native,raunet,both"):
        cli.parse_configs("off,fast")


def test_counts_below_their_minimum_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--batch", "0"])
    assert "must be at least 1" in capsys.readouterr().err
