"""A run the user cancels leaves nothing behind: ComfyUI's own interrupt, mid-run.

The user's Cancel sets ComfyUI's interrupt flag (``interrupt_current_processing``); the
server's progress hook raises ``InterruptProcessingException`` at the next step
(``throw_exception_if_processing_interrupted``). Each case below interrupts a run of
RAU-Net, MSW-MSA, and the ControlNet bridge under RAU-Net, either between steps (where
the server raises it) or inside a UNet call (after some blocks ran, where a node that
checks the flag during a call would raise it), then runs the same model again: the
result must equal the same graph's result in a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import REPO_ROOT, control_hint, sample, tiny_controlnet, tiny_model
from node_settings import MSW_SD15, RAUNET_SD15

STEPS = 4
RAUNET = dict(RAUNET_SD15, ca_end_time=0.6)
MSW = dict(MSW_SD15)
CASES = ("raunet", "msw_msa", "controlnet")
SIZE = (24, 40)

FRESH_PROCESS = """
import hashlib, json, sys
sys.path[:0] = [{comfy_tests!r}, {tests!r}]
from harness import import_comfyui, load_pack
import_comfyui()
import test_interrupts_comfy as cases
pack = load_pack()
print("DIGESTS", json.dumps({{case: cases.digest(cases.run(pack, case)) for case in cases.CASES}}))
"""


def patched_model(pack, case: str):
    model = tiny_model("sd15")
    if case == "msw_msa":
        return pack["ApplyMSWMSAAttention"].execute(model=model, **MSW).result[0]
    return pack["ApplyRAUNet"].execute(model=model, **RAUNET).result[0]


def control(case: str):
    if case != "controlnet":
        return None
    return tiny_controlnet("sd15").copy().set_cond_hint(control_hint(*SIZE), 1.0, (0.0, 1.0))


def run(pack, case: str, model=None, control_net=None, **kwargs) -> torch.Tensor:
    model = model or patched_model(pack, case)
    control_net = control_net or control(case)
    return sample(model, "sd15", *SIZE, seed=21, steps=STEPS, control=control_net, **kwargs)


def digest(latent: torch.Tensor) -> str:
    return hashlib.sha256(latent.numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def fresh_digests() -> dict[str, str]:
    """Each case's result in a new process that never saw an interrupt."""
    script = FRESH_PROCESS.format(comfy_tests=str(Path(__file__).parent), tests=str(REPO_ROOT / "tests"))
    env = dict(os.environ, PYTHONHASHSEED="4321")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("DIGESTS")))


def cancel_now() -> None:
    """What the user's Cancel and the server's progress hook do, in that order."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    mm.throw_exception_if_processing_interrupted()


def between_steps(model):
    def callback(step, x0, x, total_steps):
        if step == 1:
            cancel_now()

    return model, {"callback": callback}


def inside_a_call(model):
    """Cancelled at an output block of the second step's call: the input blocks (RAD,
    the CA shrink, the windows, the ControlNet residuals) have run, their restores not.
    The interrupting patch sits on a clone, which shares the patched model's patches."""
    interrupting = model.clone()
    calls = []

    def output_patch(h, hsp, transformer_options):
        if transformer_options["block"] == ("output", 5):
            calls.append(1)
            if len(calls) == 2:
                cancel_now()
        return h, hsp

    interrupting.set_model_output_block_patch(output_patch)
    return interrupting, {}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("where", [between_steps, inside_a_call], ids=["between_steps", "inside_a_call"])
def test_the_run_after_a_cancel_equals_a_fresh_process(pack, fresh_digests, case, where):
    """The same patched model and ControlNet run again after the cancel, as ComfyUI's cache
    would reuse them when the user queues the prompt again."""
    import comfy.model_management as mm

    patched, control_net = patched_model(pack, case), control(case)
    interrupting, kwargs = where(patched)
    with pytest.raises(mm.InterruptProcessingException):
        run(pack, case, interrupting, control_net, **kwargs)
    assert not mm.processing_interrupted()
    after = run(pack, case, patched, control_net)
    assert digest(after) == fresh_digests[case]
    plain = sample(tiny_model("sd15"), "sd15", *SIZE, seed=21, steps=STEPS, control=control(case))
    assert not torch.equal(after, plain)  # the effect acted on the run that is compared
