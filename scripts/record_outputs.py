"""Record what every node of the pack gives for a fixed set of runs, to prove a refactor changes nothing.

Usage (before and after a change; the file goes outside the repository)::

    COMFYUI_PATH=~/comfy/ComfyUI-0.3.64 python scripts/record_outputs.py /tmp/before.json
    COMFYUI_PATH=~/comfy/ComfyUI-0.3.64 python scripts/record_outputs.py /tmp/after.json --compare /tmp/before.json

``--quick`` samples two sizes (one square, one odd and non-square) with one seed: a third
of the sampled runs (on the 2-core CPU the full set's SD1.5 half alone took 23 minutes).

Each run records a SHA-256 of the sampled latent's bytes (bit-identical or not), and the
text users see: every node's V1 schema (inputs, defaults, tooltips, order), the Inspect
report, and the message of each bad input at queue time and at execution. Tiny random UNets
in the SD1.5 and SDXL layouts, several sizes and aspect ratios, two seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "comfy")]

import harness  # noqa: E402
import torch  # noqa: E402
from node_settings import MSW_SD15, MSW_SDXL, RAUNET_SD15, RAUNET_SDXL  # noqa: E402

log = logging.getLogger("hidiff.record")

SIZES = ((48, 48), (37, 53), (64, 40))
SEEDS = (0, 1)
FAMILIES = {"sd15": (RAUNET_SD15, MSW_SD15), "sdxl": (RAUNET_SDXL, MSW_SDXL)}
RAUNET_YAML = (
    "",
    "ca_fadeout_start_time: 0.1\nca_fadeout_cap: 0.2",
    "ca_downscale_factor_w: 3.0\nca_downscale_mode: adaptive_avg_pool2d",
    "two_stage_upscale_mode: bicubic\nupscale_mode: bilinear",
    "time_mode: sigma\nstart_time: 50\nend_time: 2\nca_start_time: 50\nca_end_time: 5",
)
MSW_YAML = ("", "window_grid: native\nnative_resolution: 128", "window_grid: 3x2", "shift_mode: independent")
SIMPLE_RES = ("high (1536-2048)", "low (1024 or lower)", "ultra (over 2048)")
"""ApplyRAUNetSimple's res_mode options, as saved workflows hold them."""
SAMPLERS = ("heun", "dpmpp_2s_ancestral", "dpmpp_sde")
"""Samplers that call the model between the schedule's sigmas (second-order, ancestral, SDE)."""
AUTO_ADVANCED = (
    "native_resolution: 256",
    "native_resolution: 256\nschedule: official",
    "native_resolution: 256\nwindow_grid: 2x2",
    "native_resolution: 192\naggressive: false",
)
BAD_INPUTS = {
    "ApplyRAUNet": (
        {"time_mode": "steps"},
        {"start_time": 0.6, "end_time": 0.2},
        {"upscale_mode": "sharp"},
        {"ca_downscale_factor": 1.5},
        {"input_blocks": "3,x"},
        {"yaml_parameters": "verbos: true"},
        {"yaml_parameters": "ca_fadeout_cap: 2"},
        {"yaml_parameters": "ca_fadeout_start_time: 0.9"},
        {"yaml_parameters": "[1, 2]"},
        {"input_blocks": "4"},
        {"output_blocks": "5"},
    ),
    "ApplyMSWMSAAttention": (
        {"time_mode": "x"},
        {"input_blocks": "-1"},
        {"yaml_parameters": "window_grid: 0x2"},
        {"yaml_parameters": "shift_mode: some"},
        {"yaml_parameters": "native_resolution: 10"},
        {"input_blocks": "99"},
    ),
    "ApplyRAUNetSimple": ({"res_mode": "huge"}, {"upscale_mode": "x"}, {"model_type": "SDXL"}),
    "ApplyMSWMSAAttentionSimple": ({"model_type": "SD3"}, {"model_type": "SDXL"}),
    "ApplyHiDiffusion": (
        {"advanced": "turbo: maybe"},
        {"advanced": "schedule: best"},
        {"advanced": "native_resolution: 8"},
    ),
}


def digest(latent: torch.Tensor) -> str:
    return hashlib.sha256(latent.contiguous().numpy().tobytes()).hexdigest()[:16]


def sampled(model: Any, family: str, size: tuple[int, int], seed: int) -> str:
    return digest(harness.sample(model, family, *size, seed=seed, steps=4))


def node_output(node: Any, **inputs: Any) -> Any:
    return node.execute(**inputs).result[0]


def message_of(call: Any, **inputs: Any) -> str:
    try:
        result = call(**inputs)
    except ValueError as exc:
        return f"raised: {exc}"
    return f"returned: {result!r}" if isinstance(result, (bool, str)) else "returned a value"


def record(sizes: tuple[tuple[int, int], ...] = SIZES, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    nodes = harness.load_pack()
    ours = [name for name, node in nodes.items() if "hidiff" in node.__module__]
    out: dict[str, Any] = {"schemas": {name: nodes[name].GET_NODE_INFO_V1() for name in sorted(ours)}}
    runs: dict[str, str] = {}
    for family, (raunet_values, msw_values) in FAMILIES.items():
        model = harness.tiny_model(family)
        for size in sizes:
            for seed in seeds:
                key = f"{family} {size[0]}x{size[1]} seed {seed}"
                runs[f"{key} unpatched"] = sampled(model, family, size, seed)
                for yaml in RAUNET_YAML:
                    patched = node_output(nodes["ApplyRAUNet"], model=model, yaml_parameters=yaml, **raunet_values)
                    runs[f"{key} ApplyRAUNet {yaml!r}"] = sampled(patched, family, size, seed)
                for yaml in MSW_YAML:
                    patched = node_output(
                        nodes["ApplyMSWMSAAttention"], model=model, yaml_parameters=yaml, **msw_values
                    )
                    runs[f"{key} ApplyMSWMSAAttention {yaml!r}"] = sampled(patched, family, size, seed)
                for res in SIMPLE_RES:
                    for mode in ("default", "bilinear"):
                        patched = node_output(
                            nodes["ApplyRAUNetSimple"],
                            model=model,
                            model_type="auto",
                            res_mode=res,
                            upscale_mode=mode,
                            ca_upscale_mode=mode,
                        )
                        runs[f"{key} ApplyRAUNetSimple {res} {mode}"] = sampled(patched, family, size, seed)
                patched = node_output(nodes["ApplyMSWMSAAttentionSimple"], model=model, model_type="auto")
                runs[f"{key} ApplyMSWMSAAttentionSimple"] = sampled(patched, family, size, seed)
                for advanced in AUTO_ADVANCED:
                    for use_raunet, use_msw in ((True, True), (True, False), (False, True)):
                        patched = node_output(
                            nodes["ApplyHiDiffusion"],
                            model=model,
                            width=size[1] * 8,
                            height=size[0] * 8,
                            raunet=use_raunet,
                            msw_msa=use_msw,
                            advanced=advanced,
                        )
                        runs[f"{key} ApplyHiDiffusion {use_raunet} {use_msw} {advanced!r}"] = sampled(
                            patched, family, size, seed
                        )
            for size in SIZES:
                for advanced in AUTO_ADVANCED:
                    report = nodes["HiDiffusionInspect"].execute(
                        model=model, width=size[1] * 8, height=size[0] * 8, advanced=advanced
                    )
                    runs[f"{family} {size} Inspect {advanced!r}"] = report.result[0]
        defaults = {"ApplyRAUNet": raunet_values, "ApplyMSWMSAAttention": msw_values}
        for name, cases in BAD_INPUTS.items():
            base = dict(defaults.get(name, {}))
            if name == "ApplyRAUNetSimple":
                base = {
                    "model_type": "auto",
                    "res_mode": SIMPLE_RES[1],
                    "upscale_mode": "default",
                    "ca_upscale_mode": "default",
                }
            elif name == "ApplyMSWMSAAttentionSimple":
                base = {"model_type": "auto"}
            elif name == "ApplyHiDiffusion":
                base = {"width": 384, "height": 384, "raunet": True, "msw_msa": True, "advanced": ""}
            for case in cases:
                inputs = dict(base, **case)
                widgets = {k: v for k, v in inputs.items() if k not in ("width", "height", "raunet", "msw_msa")}
                if name == "ApplyHiDiffusion":
                    widgets = {"advanced": inputs["advanced"]}
                runs[f"{family} {name} {case} queue"] = message_of(nodes[name].validate_inputs, **widgets)
                runs[f"{family} {name} {case} execute"] = message_of(nodes[name].execute, model=model, **inputs)
    runs.update(sampler_and_control_runs(nodes))
    out["runs"] = runs
    return out


def sampler_and_control_runs(nodes: dict[str, Any]) -> dict[str, str]:
    """RAU-Net (CA with a fadeout) and MSW-MSA together under samplers that call the model
    between the schedule's sigmas, and under a ControlNet (the residual bridge)."""
    runs: dict[str, str] = {}
    for family, (raunet_values, msw_values) in FAMILIES.items():
        model = harness.tiny_model(family)
        raunet = node_output(nodes["ApplyRAUNet"], model=model, yaml_parameters=RAUNET_YAML[1], **raunet_values)
        both = node_output(nodes["ApplyMSWMSAAttention"], model=raunet, yaml_parameters="", **msw_values)
        for size in SIZES[:2]:
            key = f"{family} {size[0]}x{size[1]} RAU-Net fadeout + MSW-MSA"
            for sampler in SAMPLERS:
                runs[f"{key} {sampler}"] = digest(harness.sample(both, family, *size, steps=4, sampler=sampler))
            hint = harness.control_hint(*size)
            control = harness.tiny_controlnet(family).copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
            for sampler in ("euler", "heun"):
                latent = harness.sample(both, family, *size, steps=4, sampler=sampler, control=control)
                runs[f"{key} ControlNet {sampler}"] = digest(latent)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the record (outside the repository)")
    parser.add_argument("--compare", type=Path, help="an earlier record: list every difference, exit 1 if any")
    parser.add_argument("--quick", action="store_true", help="two sizes and one seed (a third of the runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    harness.import_comfyui()
    torch.manual_seed(0)
    result = record(SIZES[:2], SEEDS[:1]) if args.quick else record()
    args.output.write_text(json.dumps(result, indent=1, sort_keys=True, default=repr))
    sampled_runs = sum(1 for value in result["runs"].values() if len(value) == 16)
    log.warning(
        "%d entries (%d sampled latents), %d node schemas -> %s",
        len(result["runs"]),
        sampled_runs,
        len(result["schemas"]),
        args.output,
    )
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    after = json.loads(args.output.read_text())
    differences = [
        f"{part}: {key}"
        for part in ("schemas", "runs")
        for key in sorted(set(before[part]) | set(after[part]))
        if before[part].get(key) != after[part].get(key)
    ]
    for line in differences:
        log.warning("differs: %s", line)
    log.warning("%d of %d entries differ", len(differences), len(before["runs"]) + len(before["schemas"]))
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
