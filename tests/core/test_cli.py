"""``python -m hidiff bench``: the README's main job is wired to the benchmark script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hidiff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_bench_help_comes_from_the_benchmark_script():
    result = run("bench", "--help")
    assert result.returncode == 0
    assert "--size" in result.stdout and "--configs" in result.stdout and "--json" in result.stdout


def test_anything_else_prints_the_usage():
    result = run("frobnicate")
    assert result.returncode == 2 and result.stderr.startswith("usage: python -m hidiff bench")


def test_bench_defaults_to_a_size_a_small_cpu_finishes(monkeypatch):
    import hidiff.__main__ as cli

    calls = []
    monkeypatch.setattr(cli.runpy, "run_path", lambda path, run_name: calls.append((Path(path).name, sys.argv[1:])))
    assert cli.main(["bench", "--configs", "off", "--model", "sdxl", "--steps", "8"]) == 0
    unet_call, schedule = calls
    assert unet_call == ("unet_call.py", ["--size", cli.DEFAULT_SIZE, "--configs", "off", "--model", "sdxl"])
    assert schedule[0] == "schedule.py"
    assert schedule[1][:4] == ["--steps", "8", "--size", "256x256"] and schedule[1][-2:] == ["--model", "sdxl"]
    calls.clear()
    assert cli.main(["bench", "--size", "1024x1024", "--no-schedule"]) == 0
    assert calls == [("unet_call.py", ["--size", "1024x1024"])]
