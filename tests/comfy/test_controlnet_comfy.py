"""ControlNet residuals while RAU-Net shrinks the feature maps, in real ComfyUI."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from harness import REPO_ROOT, control_hint, sample, tiny_controlnet, tiny_model
from node_settings import RAUNET_SD15

DROPPED = "control could not be applied"


def raunet(pack, model, yaml_parameters=None, **overrides):
    values = dict(RAUNET_SD15, **overrides)
    return pack["ApplyRAUNet"].execute(model=model, yaml_parameters=yaml_parameters, **values).result[0]


def controlnet(height, width, strength=1.0):
    return tiny_controlnet("sd15").copy().set_cond_hint(control_hint(height, width), strength, (0.0, 1.0))


def dropped(logs) -> list[str]:
    return [m for m in logs.messages(logging.WARNING) if DROPPED in m]


def test_residuals_reach_the_shrunk_maps(pack, logs):
    model = raunet(pack, tiny_model("sd15"))
    with_cn = sample(model, "sd15", 24, 40, steps=3, control=controlnet(24, 40))
    assert dropped(logs) == []
    without_cn = sample(model, "sd15", 24, 40, steps=3)
    assert not torch.allclose(with_cn, without_cn, atol=1e-3)
    scaled = [
        m for m in logs.messages() if "Scaling controlnet conditioning: torch.Size([6, 10]) -> torch.Size([3, 5])" in m
    ]
    assert len(scaled) == 1  # once per run


def test_without_the_bridge_stock_comfyui_drops_them(pack, logs, monkeypatch):
    """The same run with the bridge switched off by the seed's variable: ComfyUI drops the
    residuals (this is what the bridge fixes, and why the test above can fail)."""
    monkeypatch.setenv("JANKHIDIFFUSION_DISABLE_CONTROLNET_WORKAROUND", "1")
    model = raunet(pack, tiny_model("sd15"))
    sample(model, "sd15", 24, 40, steps=3, control=controlnet(24, 40))
    assert dropped(logs)


@pytest.mark.parametrize(
    "variable", ["JANKHIDIFFUSION_DISABLE_CONTROLNET_WORKAROUND", "JANKHIDIFFUSION_NO_CONTROLNET_WORKAROUND"]
)
def test_seed_environment_variables_switch_it_off(pack, monkeypatch, variable):
    monkeypatch.setenv(variable, "yes")
    model = raunet(pack, tiny_model("sd15"))
    assert "hidiffusion_controlnet" not in str(model.wrappers)


def test_bit_identical_to_stock_when_no_effect_is_active(pack, logs):
    """RAU-Net installed but active at no step (a sigma range below the last step's
    sigma_min = 0.029): the ControlNet run equals stock ComfyUI bit for bit."""
    base = tiny_model("sd15")
    quiet = {"time_mode": "sigma", "start_time": 0.02, "end_time": 0.01, "ca_start_time": 0.02, "ca_end_time": 0.01}
    model = raunet(pack, base, **quiet)
    assert "hidiffusion_controlnet" in str(model.wrappers)
    stock = sample(base, "sd15", 24, 40, steps=3, control=controlnet(24, 40))
    ours = sample(model, "sd15", 24, 40, steps=3, control=controlnet(24, 40))
    assert torch.equal(ours, stock)
    assert dropped(logs) == []


def test_resize_method_is_configurable(pack):
    base = tiny_model("sd15")
    bicubic = sample(raunet(pack, base), "sd15", 24, 40, steps=2, control=controlnet(24, 40))
    nearest = sample(
        raunet(pack, base, yaml_parameters="controlnet_resize_mode: nearest"),
        "sd15",
        24,
        40,
        steps=2,
        control=controlnet(24, 40),
    )
    assert not torch.equal(bicubic, nearest)
    with pytest.raises(ValueError, match="controlnet_resize_mode = 'lanczos' is not valid; use one of bicubic"):
        raunet(pack, base, yaml_parameters="controlnet_resize_mode: lanczos")


def test_odd_size_with_controlnet(pack, logs):
    model = raunet(pack, tiny_model("sd15"))
    result = sample(model, "sd15", 29, 45, steps=2, control=controlnet(29, 45))
    assert torch.isfinite(result).all() and dropped(logs) == []


ASSIGNMENT = re.compile(
    r"^\s*(comfy|comfy_extras|comfy_api|nodes|folder_paths|execution|torch|[a-z_]*(openaimodel|attention|samplers|model_management))\.[\w.]+\s*=[^=]"
    r"|setattr\(\s*(comfy|nodes|torch|openaimodel|attention)",
    re.MULTILINE,
)


STARTUP_AS_MAIN = {
    "hidiff/bench/comfy_env.py: comfy.model_patcher.CoreModelPatcher =",
    "hidiff/bench/comfy_env.py: comfy.memory_management.aimdo_enabled =",
}
"""ComfyUI's own dynamic-VRAM start-up lines (0.33.0 main.py:328-329), which the benchmark
repeats because it is its process's ``main`` (so its figures use the loader users run). They
live in the bench only; ComfyUI never imports the bench, and the pack's runtime has none."""


def test_the_package_assigns_no_attribute_of_comfyui_or_third_party_modules():
    offenders = set()
    for path in (REPO_ROOT / "hidiff").rglob("*.py"):
        for match in ASSIGNMENT.finditer(path.read_text()):
            offenders.add(f"{path.relative_to(REPO_ROOT)}: {match.group(0).strip()}")
    assert offenders == STARTUP_AS_MAIN
    # and the pattern does catch the monkeypatch earlier ports used
    assert ASSIGNMENT.search("openaimodel.apply_control = patched_apply_control\n")
    assert ASSIGNMENT.search("    comfy.ldm.modules.diffusionmodules.openaimodel.apply_control = f\n")
    assert ASSIGNMENT.search("setattr(comfy.ldm.modules, 'x', 1)")


def test_comfyui_is_left_exactly_as_found_after_unloading(pack):
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_management as mm

    mm.unload_all_models()  # models patched by earlier tests may still be loaded
    base = tiny_model("sd15")
    before_module = dict(vars(openaimodel))
    unet = base.get_model_object("diffusion_model")

    def forwards():
        """What each module's forward resolves to. (ComfyUI's unpatch restores an object
        patch by setting the original bound method back on the instance, so compare the
        function and its owner, not the instance dict.)"""
        return {name: (m.forward.__func__, m.forward.__self__) for name, m in unet.named_modules()}

    before = forwards()
    assert all(func is type(m).forward for (func, m) in before.values())
    model = raunet(pack, base)
    sample(model, "sd15", 24, 40, steps=2, control=controlnet(24, 40))
    mm.unload_all_models()
    assert dict(vars(openaimodel)) == before_module
    assert forwards() == before
    assert Path(openaimodel.__file__).is_file()


def tiny_t2i_adapter(height: int, width: int):
    """A ComfyUI T2I-Adapter for the tiny SD1.5 layout (channels 32/64/128/128), random weights."""
    import comfy.controlnet
    import comfy.t2i_adapter.adapter

    adapter = comfy.t2i_adapter.adapter.Adapter(
        channels=[32, 64, 128, 128], nums_rb=1, cin=3 * 64, ksize=1, sk=True, use_conv=False, xl=False
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    control = comfy.controlnet.T2IAdapter(adapter, 3, 8, "nearest-exact", device=torch.device("cpu"))
    return control.copy().set_cond_hint(control_hint(height, width), 1.0, (0.0, 1.0))


def test_t2i_adapter_input_residuals_reach_the_shrunk_maps(pack, logs):
    """T2I-Adapters add "input" residuals after input blocks: under RAU-Net they are fitted
    too (stock ComfyUI drops them, see the variable test above)."""
    model = raunet(pack, tiny_model("sd15"))
    with_adapter = sample(model, "sd15", 24, 40, steps=2, control=tiny_t2i_adapter(24, 40))
    assert dropped(logs) == []
    assert not torch.allclose(with_adapter, sample(model, "sd15", 24, 40, steps=2), atol=1e-3)
    assert any("Scaling controlnet conditioning" in m for m in logs.messages())


def test_t2i_adapter_residuals_are_dropped_by_stock_comfyui_under_raunet(pack, logs, monkeypatch):
    monkeypatch.setenv("JANKHIDIFFUSION_DISABLE_CONTROLNET_WORKAROUND", "1")
    model = raunet(pack, tiny_model("sd15"))
    sample(model, "sd15", 24, 40, steps=2, control=tiny_t2i_adapter(24, 40))
    assert dropped(logs)
