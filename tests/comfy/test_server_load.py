"""The real server under a mixed queue of good and malformed prompts (127.0.0.1 only).

34 prompts go to one server: good graphs with the auto node, RAU-Net + MSW-MSA, the
Simple nodes and ControlNet under RAU-Net, and malformed ones where one widget or YAML
field of one of our nodes is fuzzed (wrong types, huge and negative numbers, unicode,
empty strings, 100 kB of YAML, a YAML alias bomb). Every good prompt must finish with the
latent the same graph gives in this process; every bad one must be refused at queue time
with a 400 whose ``node_errors`` name the node and the input, never a 500 or a traceback
(values only the loaded model shows are wrong are refused when the node runs, before any
sampling, with an error naming the input);
the server must stay up and its resident memory must stay within :data:`MEMORY_BOUND_MB`
of what it was after the first good prompts. The figures are logged
(``hidiffusion.tests``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
import zlib
from pathlib import Path

import node_settings
import pytest
import torch
from comfy_server import http
from harness import conditioning, load_pack, tiny_controlnet, tiny_model
from test_server_e2e import server  # noqa: F401 (the module's server fixture)

logger = logging.getLogger("hidiffusion.tests")
MEMORY_BOUND_MB = 200
"""Resident-memory growth allowed over the run, after warm-up (the first good prompts load
the models and ComfyUI's caches)."""
DEADLINE_S = 600
DETAIL_BOUND = 4000
"""The longest error text one input may get back: a message naming the input and the valid
values, never the 100 kB YAML or an expanded alias bomb echoed back. (ComfyUI repeats a
failed ``validate_inputs`` message once per input of the node.)"""

RAUNET_SD15 = dict(node_settings.RAUNET_SD15, yaml_parameters="")
MSW_SD15 = dict(node_settings.MSW_SD15, yaml_parameters="")
ALIAS_BOMB = "\n".join(
    [f"a0: &a0 [{', '.join(['x'] * 9)}]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["start_time: *a8"]
)
"""Nine levels of nine aliases: 387 million strings if anything expanded it."""
BIG_YAML = "verbose: true\n" + "".join(f"# filler line {i:06d} {'x' * 80}\n" for i in range(1100))


def graph(kind: str, seed: int) -> dict:
    """A prompt of ``kind``: the model chain, then KSampler on a small latent and SaveLatent."""
    family = "sdxl" if kind in ("auto_sdxl", "simple_sdxl") else "sd15"
    nodes: dict[str, dict] = {"1": {"class_type": "TestTinyUNet", "inputs": {"family": family}}}
    model = ["1", 0]
    if kind in ("auto_sd15", "auto_sdxl"):
        size = 1024 if family == "sd15" else 2048
        nodes["2"] = {"class_type": "ApplyHiDiffusion", "inputs": {"model": model, "width": size, "height": size,
                      "raunet": True, "msw_msa": True,
                      # the 192x256 px latent is above this native size; the model gates calls at or below it
                      "advanced": "native_resolution: 128"}}  # fmt: skip
        model = ["2", 0]
    elif kind in ("raunet_msw", "controlnet"):
        nodes["2"] = {"class_type": "ApplyRAUNet", "inputs": {"model": model, **RAUNET_SD15}}
        nodes["3"] = {"class_type": "ApplyMSWMSAAttention", "inputs": {"model": ["2", 0], **MSW_SD15}}
        model = ["3", 0]
    elif kind == "simple_sdxl":
        nodes["2"] = {"class_type": "ApplyRAUNetSimple", "inputs": {"model": model, "model_type": "auto",
                      "res_mode": "high (1536-2048)", "upscale_mode": "default", "ca_upscale_mode": "default"}}  # fmt: skip
        nodes["3"] = {"class_type": "ApplyMSWMSAAttentionSimple", "inputs": {"model_type": "auto", "model": ["2", 0]}}
        model = ["3", 0]
    positive, negative = ["4", 0], ["5", 0]
    nodes["4"] = {"class_type": "TestFakeConditioning", "inputs": {"family": family, "seed": 1}}
    nodes["5"] = {"class_type": "TestFakeConditioning", "inputs": {"family": family, "seed": 2}}
    if kind == "controlnet":
        nodes["10"] = {"class_type": "TestTinyControlNet", "inputs": {"family": "sd15"}}
        nodes["11"] = {"class_type": "EmptyImage", "inputs": {"width": 192, "height": 256, "batch_size": 1,
                       "color": 0x8040C0}}  # fmt: skip
        nodes["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": positive, "negative": negative,
                       "control_net": ["10", 0], "image": ["11", 0], "strength": 1.0, "start_percent": 0.0,
                       "end_percent": 1.0}}  # fmt: skip
        positive, negative = ["12", 0], ["12", 1]
    nodes["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 192, "height": 256, "batch_size": 1}}
    nodes["7"] = {"class_type": "KSampler", "inputs": {"model": model, "seed": seed, "steps": 2, "cfg": 5.0,
                  "sampler_name": "euler", "scheduler": "normal", "positive": positive, "negative": negative,
                  "latent_image": ["6", 0], "denoise": 1.0}}  # fmt: skip
    nodes["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"load_{kind}_{seed}"}}
    return nodes


GOOD = [
    ("auto_sd15", 1), ("raunet_msw", 2), ("auto_sdxl", 3), ("simple_sdxl", 4), ("controlnet", 5),
    ("auto_sd15", 6), ("raunet_msw", 7), ("controlnet", 8),
]  # fmt: skip
BAD = [
    # (kind, node id in the graph, input, value); refused at queue time
    ("raunet_msw", "2", "input_blocks", "3,x"),
    ("raunet_msw", "2", "input_blocks", "🙂"),
    ("raunet_msw", "2", "output_blocks", "-8"),
    ("raunet_msw", "2", "start_time", "soon"),
    ("raunet_msw", "2", "end_time", -1e9),
    ("raunet_msw", "2", "ca_downscale_factor", -1e308),
    ("raunet_msw", "2", "time_mode", "minutes"),
    ("raunet_msw", "2", "upscale_mode", ""),
    ("raunet_msw", "2", "two_stage_upscale_mode", "lanczos"),
    ("raunet_msw", "2", "yaml_parameters", ALIAS_BOMB),
    ("raunet_msw", "2", "yaml_parameters", BIG_YAML + "start_time: [1, 2]\n"),
    ("raunet_msw", "2", "yaml_parameters", "{{{{ not yaml"),
    ("raunet_msw", "2", "yaml_parameters", "ca_fadeout_cap: 🙂"),
    ("raunet_msw", "2", "yaml_parameters", "- 1\n- 2"),
    ("raunet_msw", "3", "yaml_parameters", "начало: 0.5"),
    ("raunet_msw", "3", "end_time", "1.0.0"),
    ("auto_sd15", "2", "width", -5),
    ("auto_sd15", "2", "width", "wide"),
    ("auto_sd15", "2", "height", 10**12),
    ("auto_sd15", "2", "advanced", ALIAS_BOMB.replace("start_time", "native_resolution")),
    ("simple_sdxl", "2", "res_mode", "extreme"),
    ("simple_sdxl", "2", "upscale_mode", "🙂"),
    ("simple_sdxl", "3", "model_type", 5),
]
BAD_FOR_THE_MODEL = [
    # well-formed values that only the loaded model shows are wrong: refused when the node
    # runs, before any sampling, with an error that names the input; the server goes on
    ("raunet_msw", "2", "input_blocks", "99999999999999999999999"),
    ("raunet_msw", "2", "output_blocks", "5"),
]


def _bad_prompt(kind: str, node: str, name: str, value) -> dict:
    prompt = copy.deepcopy(graph(kind, seed=99))
    prompt[node]["inputs"][name] = value
    return prompt


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"main.py" in command and port.encode() in command:
                return int(entry.name)
    raise AssertionError(f"no server process on port {port}")


def _wait(url: str, prompt_ids: list[str]) -> dict[str, dict]:
    deadline = time.monotonic() + DEADLINE_S
    done: dict[str, dict] = {}
    while len(done) < len(prompt_ids) and time.monotonic() < deadline:
        for prompt_id in prompt_ids:
            if prompt_id not in done:
                _, history = http(f"{url}/history/{prompt_id}")
                if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                    done[prompt_id] = history[prompt_id]
        time.sleep(0.5)
    return done


def in_process(prompt: dict) -> torch.Tensor:
    """The latent the prompt's KSampler gives, with the same nodes called in this process."""
    import nodes as comfy_nodes

    classes = dict(comfy_nodes.NODE_CLASS_MAPPINGS, **load_pack())
    test_nodes = {
        "TestTinyUNet": lambda family: (tiny_model(family),),
        "TestFakeConditioning": lambda family, seed: (conditioning(family, seed=seed),),
        "TestTinyControlNet": lambda family: (tiny_controlnet(family),),
    }
    results: dict[str, tuple] = {}

    def evaluate(node_id: str) -> tuple:
        if node_id not in results:
            spec = prompt[node_id]
            inputs = {
                name: evaluate(value[0])[value[1]] if isinstance(value, list) else value
                for name, value in spec["inputs"].items()
            }
            kind = spec["class_type"]
            if kind in test_nodes:
                results[node_id] = test_nodes[kind](**inputs)
            elif hasattr(classes[kind], "define_schema"):  # a V3 node
                results[node_id] = tuple(classes[kind].execute(**inputs).result)
            else:
                out = getattr(classes[kind](), classes[kind].FUNCTION)(**inputs)
                results[node_id] = out if isinstance(out, tuple) else tuple(out["result"])
        return results[node_id]

    return evaluate("7")[0]["samples"]


def _saved_latent(base: Path, prefix: str) -> torch.Tensor:
    from safetensors.torch import load_file

    (path,) = list((base / "output").glob(f"{prefix}_*.latent"))
    return load_file(str(path))["latent_tensor"]


def _names_the_input(reply: dict, node: str, name: str) -> bool:
    """Whether an error of ``node`` names ``name`` in what it says. ComfyUI files a failed
    ``validate_inputs`` under every input it was given ("<input> - <message>"), so for
    those the message itself must name the input; its own type, range and list checks
    name it in ``extra_info``."""
    for error in reply.get("node_errors", {}).get(node, {}).get("errors", []):
        if error.get("type") == "custom_validation_failed":
            if name in error.get("details", "").split(" - ", 1)[-1]:
                return True
        elif error.get("extra_info", {}).get("input_name") == name:
            return True
    return False


def _longest_detail(reply: dict) -> int:
    errors = [error for node in reply.get("node_errors", {}).values() for error in node.get("errors", [])]
    return max((len(error.get("details", "")) for error in errors), default=0)


def _run_error(entry: dict) -> dict:
    """The execution_error message of a finished prompt's history entry ({} if none)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return {}


def test_a_mixed_queue_of_good_and_malformed_prompts(server):  # noqa: F811 (the fixture)
    url, base = server.url, server.base
    pid = _server_pid(url)
    client = str(uuid.uuid4())
    warm_ids = []
    for kind, seed in GOOD[:5]:
        status, reply = http(f"{url}/prompt", {"prompt": graph(kind, seed), "client_id": client})
        assert status == 200 and not reply.get("node_errors"), (kind, reply)
        warm_ids.append(reply["prompt_id"])
    warm = _wait(url, warm_ids)
    rss_warm = _rss_mb(pid)
    began = time.monotonic()
    statuses, refused_by_name, good_ids = [], 0, list(warm_ids)
    run_bad_ids: dict[str, tuple] = {}
    queue = [("good", item) for item in GOOD[5:]] + [("bad", item) for item in BAD]
    queue += [("bad_for_the_model", item) for item in BAD_FOR_THE_MODEL]
    queue.sort(key=lambda entry: zlib.crc32(repr(entry).encode()))  # interleaved, the same order in every run
    for role, item in queue:
        if role != "bad":
            prompt = graph(*item) if role == "good" else _bad_prompt(*item)
            status, reply = http(f"{url}/prompt", {"prompt": prompt, "client_id": client})
            assert status == 200 and not reply.get("node_errors"), (item, reply)
            if role == "good":
                good_ids.append(reply["prompt_id"])
            else:
                run_bad_ids[reply["prompt_id"]] = item
            continue
        kind, node, name, value = item
        status, reply = http(f"{url}/prompt", {"prompt": _bad_prompt(*item), "client_id": client}, timeout=60)
        statuses.append(status)
        text = str(reply)
        assert status == 400, (name, repr(value)[:80], status, text[:500])
        assert "traceback" not in text.lower(), (name, text[:500])  # ComfyUI adds one to an exception
        assert _longest_detail(reply) <= DETAIL_BOUND, (name, _longest_detail(reply))
        assert _names_the_input(reply, node, name), (name, repr(value)[:80], text[:800])
        refused_by_name += 1
    finished = dict(warm, **_wait(url, good_ids[len(warm_ids) :] + list(run_bad_ids)))
    seconds = time.monotonic() - began
    rss_after = _rss_mb(pid)
    assert http(f"{url}/object_info/KSampler")[0] == 200  # the server is still up
    failed = [p for p in good_ids if finished.get(p, {}).get("status", {}).get("status_str") != "success"]
    for prompt_id, (_, node, name, value) in run_bad_ids.items():
        error = _run_error(finished.get(prompt_id, {}))
        assert error.get("node_id") == node and name in error.get("exception_message", ""), (name, value, error)
        assert "Traceback" not in error.get("exception_message", "")
    logger.info(
        f"server load: {len(GOOD) + len(BAD) + len(BAD_FOR_THE_MODEL)} prompts ({len(GOOD)} good, {len(BAD)} "
        f"malformed, {len(BAD_FOR_THE_MODEL)} wrong for the model); good finished {len(good_ids) - len(failed)}/"
        f"{len(good_ids)}; malformed: {statuses.count(400)} x 400 naming the input, "
        f"{sum(s >= 500 for s in statuses)} x 5xx; wrong for the model: {len(run_bad_ids)} refused before sampling, "
        f"naming the input; RSS {rss_warm:.0f} MB after warm-up, "
        f"{rss_after:.0f} MB after ({rss_after - rss_warm:+.0f} MB); {seconds:.0f} s after warm-up"
    )
    assert not failed, [finished.get(p, {}).get("status") for p in failed]
    assert refused_by_name == len(BAD)
    assert rss_after - rss_warm <= MEMORY_BOUND_MB, (rss_warm, rss_after)
    for kind, seed in GOOD:
        served = _saved_latent(base, f"load_{kind}_{seed}")
        assert torch.equal(served, in_process(graph(kind, seed))), (kind, seed)


@pytest.mark.parametrize("kind", ["auto_sd15", "auto_sdxl", "raunet_msw", "controlnet"])
def test_the_compared_graphs_are_patched(kind):
    """The equality above means something: each good graph's latent differs from the same
    graph with our nodes taken out."""
    plain = graph(kind, 1)
    for node in ("2", "3"):
        plain.pop(node, None)
    plain["7"]["inputs"]["model"] = ["1", 0]
    assert not torch.equal(in_process(graph(kind, 1)), in_process(plain))
