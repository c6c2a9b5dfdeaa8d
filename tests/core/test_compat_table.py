"""docs/compatibility.md is generated from the compatibility tests and kept up to date."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("make_compat_table", ROOT / "scripts" / "make_compat_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_compatibility_table_is_up_to_date():
    result = subprocess.run(
        [sys.executable, "scripts/make_compat_table.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_table_covers_every_combination_the_issue_names():
    """Item 3 and 4 of the coexistence issue: each needs a row (so a test) of its own."""
    script = load_script()
    rows = script.collect_all()
    names = " ".join(row.combination for row in rows)
    for needed in [
        "FreeU (core)",
        "FreeU V2 (core)",
        "Perturbed-Attention Guidance",
        "Self-Attention Guidance",
        "HyperTile",
        "Deep Shrink",
        "IP-Adapter",
        "LoRA",
        "manual-cast",
        "fp8",
        "quantised Downsample",
        "either order",
        "applied twice",
        "euler_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "heun",
        "dpmpp_2s_ancestral",
        "cfg = 1",
        "separate cond/uncond batches",
        "start_step/last_step",
        "denoise < 1",
        "Restart-style",
    ]:
        assert needed in names, f"no compatibility row mentions {needed!r}"
    assert {row.status for row in rows} <= set(script.STATUSES)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def test_a():\n    pass\n", "test_a has no @compat"),
        ("@compat('A', 'B', 'fine')\ndef test_a():\n    pass\n", "status 'fine' is not one of"),
        (
            "@compat('A', 'B', 'works')\ndef test_a(): ...\n@compat('A', 'B', 'works with note')\ndef test_b(): ...\n",
            "test_b says",
        ),
        ("@compat('A', NAME, 'works')\ndef test_a(): ...\n", "must be string literals or module-level"),
    ],
)
def test_a_test_without_a_valid_row_is_an_error(source, message):
    script = load_script()
    with pytest.raises(script.TableError, match=message):
        script.collect(source)


def test_rows_merge_tests_and_notes():
    script = load_script()
    rows = script.collect(
        "@compat('Area', 'X', 'works with note', 'n1')\ndef test_one(): ...\n"
        "@compat('Area', 'X', 'works with note', 'n2')\ndef test_two(): ...\n"
        "def helper(): ...\n"
    )
    assert len(rows) == 1 and rows[0].tests == ["test_one", "test_two"] and rows[0].notes == ["n1", "n2"]
    runs = [{"comfyui": "0.3.64", "outcomes": {"test_one": "passed", "test_two": "passed"}}]
    text = script.render(rows, runs)
    assert "| X | works with note | 0.3.64 | n1 n2 | `test_one`<br>`test_two` |" in text


def test_a_row_says_what_it_claims_only_where_its_tests_passed():
    """Item 5 of the evidence issue: a skipped or failed test cannot leave a row saying "works"."""
    script = load_script()
    rows = [script.Row("Area", "X with Y", "works", tests=["test_a", "test_b"])]
    runs = [
        {"comfyui": "0.33.0", "outcomes": {"test_a": "passed", "test_b": "passed"}},
        {"comfyui": "0.3.64", "outcomes": {"test_a": "passed", "test_b": "skipped: needs a feature"}},
    ]
    runs = sorted(runs, key=lambda run: [int(part) for part in run["comfyui"].split(".")])
    shown = script.render(rows, runs)
    assert "| X with Y | works | 0.33.0 (not 0.3.64: `test_b` skipped: needs a feature) | - |" in shown
    runs[1]["outcomes"]["test_b"] = "failed"
    nowhere = script.render(rows, runs)
    assert (
        "| X with Y | **not shown** | 0.3.64: `test_b` skipped: needs a feature; 0.33.0: `test_b` failed |" in nowhere
    )
    del runs[0]["outcomes"]["test_a"]
    with pytest.raises(script.TableError, match="no result for test_a"):
        script.render(rows, runs)


def test_the_recorded_runs_cover_both_supported_versions():
    script = load_script()
    runs = script.load_outcomes(sorted(script.OUTCOMES.glob("outcomes-*.json")))
    assert [run["comfyui"] for run in runs] == ["0.3.64", "0.33.0"]
