"""Write the example workflows (example_workflows/*.json) from the compact specs below.

ComfyUI's template browser shows a pack's ``example_workflows/*.json``. Those files are in
the frontend's "workflow" format, which stores widget values *by position* in the order of
each node's declared inputs, and every link twice (on both nodes and in the links list).
Written by hand, a new input or a miscounted link breaks a file without anyone noticing.
Here each value is given by input name and placed with the node definitions of the
ComfyUI in use (the pack is loaded with ComfyUI's own loader), ids and links are numbered
in one place, and nodes are laid out left to right by column.

    python scripts/make_example_workflows.py          # write the files
    python scripts/make_example_workflows.py --check  # exit 1 if a file is out of date

ComfyUI is found like the tests find it: ``$COMFYUI_PATH``, else ``~/comfy/ComfyUI``.
Write the files with the oldest supported ComfyUI (0.3.64): newer versions add outputs to
some nodes (SaveImage), which the frontend fills in on load and the check ignores when
unlinked. tests/comfy/test_example_workflows.py checks that the files are up to date and that each
passes ComfyUI's own prompt validation.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "example_workflows"

SD15_CKPT = "v1-5-pruned-emaonly.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
CANNY_CONTROLNET = "control_v11p_sd15_canny.pth"
INPUT_IMAGE = "example.png"

FLUX_UNET = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp8_e4m3fn.safetensors"
FLUX_VAE = "ae.safetensors"

MODEL_FILES = {
    "checkpoints": [SD15_CKPT, SDXL_CKPT],
    "controlnet": [CANNY_CONTROLNET],
    "diffusion_models": [FLUX_UNET],
    "text_encoders": [FLUX_CLIP_L, FLUX_T5],
    "vae": [FLUX_VAE],
}
"""The model files the workflows name, by ComfyUI model folder (the test makes placeholders)."""

CORE_EXTRAS = {"Canny": "nodes_canny.py", "EmptySD3LatentImage": "nodes_sd3.py", "FluxGuidance": "nodes_flux.py"}
"""Core nodes that live in comfy_extras, which ComfyUI's server loads at start-up but a bare
``import nodes`` does not: node id -> file."""

FRONTEND_ONLY = {"Note"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
OUR_NODES = {
    "ApplyHiDiffusion",
    "HiDiffusionInspect",
    "HiDiffusionHiresFix",
    "ApplyMSWMSAAttention",
    "ApplyMSWMSAAttentionSimple",
    "ApplyRAUNet",
    "ApplyRAUNetSimple",
}


# --- specs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A link from output ``output`` (its name or type) of the node with key ``key``."""

    key: str
    output: str


@dataclass
class Node:
    key: str
    type: str
    column: int
    inputs: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    row: float = 0
    """Place in the column: lower rows higher up; equal rows keep the spec order."""


def node(key: str, type_: str, column: int, title: str | None = None, row: float = 0, **inputs: Any) -> Node:
    return Node(key, type_, column, inputs, title, row)


def note(text: str) -> Node:
    return Node("note", "Note", 0, {"text": text}, row=-1)


def ksampler(key: str, column: int, model: Ref, latent: Ref, title: str | None = None, **settings: Any) -> Node:
    """A KSampler at denoise 1, seed 1 (fixed), on the prompts "pos" and "neg" unless ``settings``
    name other ``positive`` / ``negative`` links; ``settings`` hold steps, cfg, sampler_name, scheduler."""
    links = {"positive": Ref("pos", "CONDITIONING"), "negative": Ref("neg", "CONDITIONING")}
    links.update({name: settings.pop(name) for name in ("positive", "negative") if name in settings})
    return node(
        key, "KSampler", column, title, model=model, **links, latent_image=latent, seed=1,
        control_after_generate="fixed", **settings, denoise=1.0,
    )  # fmt: skip


NEGATIVE = "blurry, lowres, jpeg artifacts, watermark, text, deformed, duplicate, extra limbs"


def text_to_image(
    ckpt: str,
    model: Ref,
    *,
    positive: str,
    width: int,
    height: int,
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    prefix: str,
    positive_cond: Ref | None = None,
    negative_cond: Ref | None = None,
) -> list[Node]:
    """Loader, prompts, empty latent, KSampler, decode and save around a patched ``model``."""
    return [
        node("ckpt", "CheckpointLoaderSimple", 0, ckpt_name=ckpt),
        node("pos", "CLIPTextEncode", 2, "Positive prompt", text=positive, clip=Ref("ckpt", "CLIP")),
        node("neg", "CLIPTextEncode", 2, "Negative prompt", text=NEGATIVE, clip=Ref("ckpt", "CLIP")),
        node("latent", "EmptyLatentImage", 2, row=1, width=width, height=height, batch_size=1),
        ksampler(
            "sampler",
            3,
            model,
            Ref("latent", "LATENT"),
            positive=positive_cond or Ref("pos", "CONDITIONING"),
            negative=negative_cond or Ref("neg", "CONDITIONING"),
            steps=steps,
            cfg=cfg,
            sampler_name=sampler,
            scheduler=scheduler,
        ),
        node("decode", "VAEDecode", 4, samples=Ref("sampler", "LATENT"), vae=Ref("ckpt", "VAE")),
        node("save", "SaveImage", 5, images=Ref("decode", "IMAGE"), filename_prefix=prefix),
    ]


def decode_tiled(vae: Ref, column: int = 6) -> Node:
    """VAE Decode (Tiled) of the second KSampler's latent (in column 6 unless given): a
    2048-4096 px latent decoded within a consumer GPU's memory."""
    return node("decode", "VAEDecodeTiled", column, samples=Ref("sampler", "LATENT"), vae=vae, tile_size=1024,
                overlap=64, temporal_size=64, temporal_overlap=8)  # fmt: skip


LARGE_PASS_STEPS = 10
"""The second KSampler's steps: in the quality lab (docs/quality.md, native views) the large
pass at 10 steps kept the structure of 20 (as many two-eyed images, no more specks) at about
half the time."""


def guided_hires_fix(
    ckpt: str,
    *,
    positive: str,
    native: int,
    scale_by: float,
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    prefix: str,
    image: str | None = None,
    tiled_decode: bool = False,
    large_steps: int = LARGE_PASS_STEPS,
) -> list[Node]:
    """Loader and prompts, the native-size latent (a KSampler at ``native`` px, or VAE Encode of
    ``image``), HiDiffusion Hires Fix, a KSampler at denoise 1 on both of its outputs (at
    ``large_steps``), decode, save."""
    settings = {"steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler}
    large_settings = {**settings, "steps": large_steps}
    if image is None:
        source = [
            node("latent", "EmptyLatentImage", 2, row=1, width=native, height=native, batch_size=1),
            ksampler("first", 3, Ref("ckpt", "MODEL"), Ref("latent", "LATENT"), "KSampler (native size)", **settings),
        ]
        native_latent = Ref("first", "LATENT")
    else:
        source = [
            node("image", "LoadImage", 0, row=1, image=image, upload="image"),
            node("encode", "VAEEncode", 1, row=1, pixels=Ref("image", "IMAGE"), vae=Ref("ckpt", "VAE")),
        ]
        native_latent = Ref("encode", "LATENT")
    decode = (
        decode_tiled(Ref("ckpt", "VAE"))
        if tiled_decode
        else node("decode", "VAEDecode", 6, samples=Ref("sampler", "LATENT"), vae=Ref("ckpt", "VAE"))
    )
    return [
        node("ckpt", "CheckpointLoaderSimple", 0, ckpt_name=ckpt),
        node("pos", "CLIPTextEncode", 2, "Positive prompt", text=positive, clip=Ref("ckpt", "CLIP")),
        node("neg", "CLIPTextEncode", 2, "Negative prompt", text=NEGATIVE, clip=Ref("ckpt", "CLIP")),
        *source,
        node(
            "hires",
            "HiDiffusionHiresFix",
            4,
            model=Ref("ckpt", "MODEL"),
            latent=native_latent,
            scale_by=scale_by,
            raunet=True,
            msw_msa=True,
            advanced="",
        ),
        ksampler(
            "sampler",
            5,
            Ref("hires", "MODEL"),
            Ref("hires", "LATENT"),
            "KSampler (target size, denoise 1)",
            **large_settings,
        ),
        decode,
        node("save", "SaveImage", 7, images=Ref("decode", "IMAGE"), filename_prefix=prefix),
    ]


GUIDED_NOTE = (
    "HiDiffusion Hires Fix takes the native-size latent and scale_by, and gives the second KSampler "
    "the upscaled latent and a model that denoises it as native-size views (so a large head gets two "
    "eyes of its own size, not many small ones) plus a lock that holds the image's large shapes to the "
    "upscaled latent while the noise is high. Sample it at denoise 1: the composition stays, the image is "
    f"drawn anew. The second KSampler runs {LARGE_PASS_STEPS} steps: in the pack's quality lab that kept "
    "the structure of 20 at half the time. Any sampler and scheduler work. Its advanced box takes YAML: "
    "strength, exponent, lowpass, cutoff, views, views_blur, views_degrain, upscale_method, and the "
    "HiDiffusion node's keys (views: 0 gives HiDiffusion's large call instead of the views)."
)

SD15_PROMPT = (
    "a red fox resting on a mossy rock in an autumn forest, morning mist, sunbeams through the trees, "
    "highly detailed fur, sharp focus, photograph"
)
SDXL_PROMPT = (
    "a lighthouse on a rocky cliff at sunset, waves crashing below, dramatic clouds, golden light, "
    "highly detailed, photograph"
)

WORKFLOWS: dict[str, list[Node]] = {
    "sd15_2048_simple": [
        note(
            "HiDiffusion: SD1.5 at 2048x2048 with the Simple nodes\n\n"
            f"Model: an SD1.x checkpoint ({SD15_CKPT} here; finetunes work). SD2.x works too.\n\n"
            "2048 px is 4x SD1.5's native 512 px. Plain sampling at this size draws duplicated subjects; "
            "with HiDiffusion the model composes one subject and is faster:\n"
            "- Apply RAU-Net Simple, res_mode high: the deep levels run at about native size early in "
            "sampling (RAD in 3 / out 8 for 0-50 %, CA in 1 / out 11 for 0-35 %).\n"
            "- Apply MSW-MSA Attention Simple: windowed self-attention on the largest blocks "
            "(in 1,2 / out 9,10,11 from 20 %), about 4x cheaper attention.\n\n"
            "Both nodes log the preset they applied; copy it into the advanced nodes to tweak it. "
            "model_type auto reads the family from the model."
        ),
        node(
            "raunet",
            "ApplyRAUNetSimple",
            1,
            model=Ref("ckpt", "MODEL"),
            model_type="SD15",
            res_mode="high (1536-2048)",
            upscale_mode="default",
            ca_upscale_mode="default",
        ),
        node("msw", "ApplyMSWMSAAttentionSimple", 1, model_type="SD15", model=Ref("raunet", "MODEL")),
        *text_to_image(
            SD15_CKPT,
            Ref("msw", "MODEL"),
            positive=SD15_PROMPT,
            width=2048,
            height=2048,
            steps=25,
            cfg=7.0,
            sampler="euler_ancestral",
            scheduler="normal",
            prefix="hidiffusion_sd15_2048",
        ),
    ],
    "sdxl_2048_simple": [
        note(
            "HiDiffusion: SDXL at 2048x2048 with the Simple nodes\n\n"
            f"Model: an SDXL checkpoint ({SDXL_CKPT} here; finetunes work).\n\n"
            "2048 px is twice SDXL's native 1024 px on each side:\n"
            "- Apply RAU-Net Simple, res_mode high: the SDXL preset shrinks after input 4 and restores at "
            "output 5 for 0-50 % of sampling (RAD off, as SDXL tolerates it less well). For sizes over "
            "2048 use res_mode ultra.\n"
            "- Apply MSW-MSA Attention Simple: windowed self-attention in 4,5 / out 3,4,5 from 20 %.\n\n"
            "The official HiDiffusion schedule for SDXL (RAD 6 -> 2, then pooling) is what the "
            "HiDiffusion (auto) node applies; see auto_hidiffusion."
        ),
        node(
            "raunet",
            "ApplyRAUNetSimple",
            1,
            model=Ref("ckpt", "MODEL"),
            model_type="SDXL",
            res_mode="high (1536-2048)",
            upscale_mode="default",
            ca_upscale_mode="default",
        ),
        node("msw", "ApplyMSWMSAAttentionSimple", 1, model_type="SDXL", model=Ref("raunet", "MODEL")),
        *text_to_image(
            SDXL_CKPT,
            Ref("msw", "MODEL"),
            positive=SDXL_PROMPT,
            width=2048,
            height=2048,
            steps=25,
            cfg=6.0,
            sampler="dpmpp_2m",
            scheduler="karras",
            prefix="hidiffusion_sdxl_2048",
        ),
    ],
    "sd15_controlnet_canny": [
        note(
            "HiDiffusion with ControlNet: SD1.5 at 1536x1536 guided by a canny edge map\n\n"
            f"Models: an SD1.x checkpoint ({SD15_CKPT}) and the SD1.5 canny ControlNet "
            f"({CANNY_CONTROLNET}, in models/controlnet). Load any photo; the Canny node makes the edge "
            "map and the preview shows it.\n\n"
            "The pack fits the ControlNet residuals to RAU-Net's shrunk feature maps (the log says "
            "'Scaling controlnet conditioning'). With ControlNet guiding the composition RAU-Net is "
            "needed less, so Apply RAU-Net runs RAD only until 30 % and the CA part is off "
            "(ca_start_time 1 = off), as the node's docs suggest. Ancestral samplers work best with both.\n"
            "MSW-MSA needs no special handling."
        ),
        node("controlnet", "ControlNetLoader", 0, row=1, control_net_name=CANNY_CONTROLNET),
        node("image", "LoadImage", 0, row=2, image=INPUT_IMAGE, upload="image"),
        node(
            "raunet",
            "ApplyRAUNet",
            1,
            model=Ref("ckpt", "MODEL"),
            end_time=0.3,
            ca_start_time=1.0,
            ca_end_time=1.0,
        ),
        node("msw", "ApplyMSWMSAAttentionSimple", 1, model_type="SD15", model=Ref("raunet", "MODEL")),
        node("canny", "Canny", 1, image=Ref("image", "IMAGE"), low_threshold=0.4, high_threshold=0.8),
        node("preview", "PreviewImage", 2, "Edge map", row=2, images=Ref("canny", "IMAGE")),
        node(
            "apply_cn",
            "ControlNetApplyAdvanced",
            2,
            row=0.5,
            positive=Ref("pos", "CONDITIONING"),
            negative=Ref("neg", "CONDITIONING"),
            control_net=Ref("controlnet", "CONTROL_NET"),
            image=Ref("canny", "IMAGE"),
            vae=Ref("ckpt", "VAE"),
            strength=1.0,
            start_percent=0.0,
            end_percent=1.0,
        ),
        *text_to_image(
            SD15_CKPT,
            Ref("msw", "MODEL"),
            positive=SD15_PROMPT,
            width=1536,
            height=1536,
            steps=25,
            cfg=7.0,
            sampler="euler_ancestral",
            scheduler="normal",
            prefix="hidiffusion_sd15_controlnet",
            positive_cond=Ref("apply_cn", "positive"),
            negative_cond=Ref("apply_cn", "negative"),
        ),
    ],
    "sd15_advanced_nodes": [
        note(
            "HiDiffusion with the advanced nodes: SD1.5 at 1536x1536, the seed pack's recommended settings\n\n"
            f"Model: an SD1.x checkpoint ({SD15_CKPT}); SD2.x uses the same blocks.\n\n"
            "Apply RAU-Net: RAD in 3 / out 8 from 0 to 45 %, CA in 4 / out 8 from 0 to 30 % "
            "(close to the official method).\n"
            "For about 2048x2048 the seed pack found this better: CA in 1 / out 11, end_time 0.6, "
            "ca_end_time 0.35.\n"
            "Apply MSW-MSA Attention: in 1,2 / out 9,10,11 for the whole of sampling.\n\n"
            "Times are sampling percent of the model's noise schedule, not a fraction of steps. "
            "A wrong block pair is refused before sampling with the valid pairs for the model. "
            "The defaults of both nodes are for SD1.x/SD2.x: for SDXL see the node's docs (docs/nodes.md)."
        ),
        node(
            "raunet",
            "ApplyRAUNet",
            1,
            model=Ref("ckpt", "MODEL"),  # the node's defaults are the seed's recommended SD1.x settings
        ),
        node("msw", "ApplyMSWMSAAttention", 1, model=Ref("raunet", "MODEL")),  # likewise
        *text_to_image(
            SD15_CKPT,
            Ref("msw", "MODEL"),
            positive=SD15_PROMPT,
            width=1536,
            height=1536,
            steps=25,
            cfg=7.0,
            sampler="euler_ancestral",
            scheduler="normal",
            prefix="hidiffusion_sd15_advanced",
        ),
    ],
    "auto_hidiffusion": [
        note(
            "HiDiffusion (auto): SD1.5 at 2048x2048 with no block knowledge\n\n"
            f"Model: any SD1.x, SD2.x or SDXL checkpoint ({SD15_CKPT} here): swap the checkpoint and the "
            "size and nothing else changes (use cfg about 6 for SDXL).\n\n"
            "The HiDiffusion node reads the model's family and native size, compares it with the size of "
            "the connected latent and applies the official HiDiffusion schedule (RAU-Net and MSW-MSA); at "
            "or below native size it changes nothing and says so. It logs what it applied in the inputs of "
            "the advanced nodes.\n\n"
            "HiDiffusion Inspect shows the same plan on the node: which blocks each effect touches, when, "
            "and every level's feature-map size. The advanced box takes YAML such as "
            "'native_resolution: 768' or 'turbo: true'."
        ),
        node(
            "hidiffusion",
            "ApplyHiDiffusion",
            1,
            model=Ref("ckpt", "MODEL"),
            latent=Ref("latent", "LATENT"),
            width=2048,
            height=2048,
            raunet=True,
            msw_msa=True,
            advanced="",
        ),
        node(
            "inspect",
            "HiDiffusionInspect",
            1,
            model=Ref("ckpt", "MODEL"),
            latent=Ref("latent", "LATENT"),
            width=2048,
            height=2048,
            advanced="",
        ),
        *text_to_image(
            SD15_CKPT,
            Ref("hidiffusion", "MODEL"),
            positive=SD15_PROMPT,
            width=2048,
            height=2048,
            steps=25,
            cfg=7.0,
            sampler="euler_ancestral",
            scheduler="normal",
            prefix="hidiffusion_auto",
        ),
    ],
}
"""File name (without .json) -> nodes. Each node's widget values are given by input name."""


def flux_hires_fix(
    *, positive: str, native: int, scale_by: float, steps: int, large_steps: int, prefix: str
) -> list[Node]:
    """Flux dev's loaders (diffusion model, its two text encoders, its VAE), the prompt with
    Flux guidance and a zeroed negative (CFG 1), the native-size latent drawn by a KSampler,
    HiDiffusion Hires Fix, a KSampler at denoise 1 on both of its outputs, tiled decode, save.
    Six columns (the prompt's nodes stacked, the save under the decode), so the whole graph
    fits the browser at a zoom where the frontend draws the widgets."""
    settings = {"cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}
    return [
        node("unet", "UNETLoader", 0, unet_name=FLUX_UNET, weight_dtype="default"),
        node(
            "clip",
            "DualCLIPLoader",
            0,
            row=1,
            clip_name1=FLUX_CLIP_L,
            clip_name2=FLUX_T5,
            type="flux",
            device="default",
        ),
        node("vae", "VAELoader", 0, row=2, vae_name=FLUX_VAE),
        node("text", "CLIPTextEncode", 1, "Prompt", text=positive, clip=Ref("clip", "CLIP")),
        node("pos", "FluxGuidance", 1, row=1, conditioning=Ref("text", "CONDITIONING"), guidance=3.5),
        node("neg", "ConditioningZeroOut", 1, row=2, conditioning=Ref("text", "CONDITIONING")),
        node("latent", "EmptySD3LatentImage", 1, row=3, width=native, height=native, batch_size=1),
        ksampler(
            "first", 2, Ref("unet", "MODEL"), Ref("latent", "LATENT"), "KSampler (native size)", steps=steps, **settings
        ),  # fmt: skip
        node(
            "hires",
            "HiDiffusionHiresFix",
            3,
            model=Ref("unet", "MODEL"),
            latent=Ref("first", "LATENT"),
            scale_by=scale_by,
            raunet=True,
            msw_msa=True,
            advanced="",
        ),  # fmt: skip
        ksampler(
            "sampler",
            4,
            Ref("hires", "MODEL"),
            Ref("hires", "LATENT"),
            "KSampler (target size, denoise 1)",
            steps=large_steps,
            **settings,
        ),  # fmt: skip
        decode_tiled(Ref("vae", "VAE"), column=5),
        node("save", "SaveImage", 5, row=1, images=Ref("decode", "IMAGE"), filename_prefix=prefix),
    ]


WORKFLOWS.update(
    {  # the guided hires fix: two passes, or an existing image
        "hires_fix_sd15_2048": [
            note(
                "HiDiffusion Hires Fix: SD1.5 at 2048x2048 (4x the native side)\n\n"
                f"Model: an SD1.x checkpoint ({SD15_CKPT} here; SD2.x works too).\n\n"
                "The first KSampler draws the image at SD1.5's native 512 px, where it composes one subject. "
                + GUIDED_NOTE
            ),
            *guided_hires_fix(
                SD15_CKPT,
                positive=SD15_PROMPT,
                native=512,
                scale_by=4.0,
                steps=25,
                cfg=7.0,
                sampler="euler_ancestral",
                scheduler="normal",
                prefix="hidiffusion_hires_fix_sd15_2048",
            ),
        ],
        "hires_fix_sdxl_4096": [
            note(
                "HiDiffusion Hires Fix: SDXL at 4096x4096 (4x the native side)\n\n"
                f"Model: an SDXL checkpoint ({SDXL_CKPT} here; finetunes work).\n\n"
                "The first KSampler draws the image at SDXL's native 1024 px. "
                + GUIDED_NOTE
                + "\n\nVAE Decode (Tiled) decodes the 4096 px latent in tiles, within a consumer GPU's memory."
            ),
            *guided_hires_fix(
                SDXL_CKPT,
                positive=SDXL_PROMPT,
                native=1024,
                scale_by=4.0,
                steps=25,
                cfg=6.0,
                sampler="dpmpp_2m",
                scheduler="karras",
                prefix="hidiffusion_hires_fix_sdxl_4096",
                tiled_decode=True,
            ),
        ],
        "hires_fix_flux_2048": [
            note(
                "HiDiffusion Hires Fix: Flux at 2048x2048 (twice the native side, 4x the pixels)\n\n"
                f"Model: Flux dev ({FLUX_UNET}, {FLUX_CLIP_L}, {FLUX_T5} and {FLUX_VAE} here; schnell and "
                "finetunes load the same way).\n\n"
                "The first KSampler draws the image at Flux's native 1024 px (CFG 1, Flux guidance 3.5). "
                "HiDiffusion Hires Fix upscales the latent and gives the second KSampler a model with the lock "
                "(the image's large shapes held to the upscaled latent while the noise is high) and the native "
                "views (the large latent denoised as 1024 px interleaved views); on Flux it reads the noise level "
                "from Flux's own schedule. RAU-Net and MSW-MSA act on SD1.x/SD2.x/SDXL UNets only: on Flux the "
                "node runs without them and says so in the log. Sample at denoise 1.\n\n"
                "VAE Decode (Tiled) decodes the 2048 px latent in tiles."
            ),
            *flux_hires_fix(
                positive=SDXL_PROMPT,
                native=1024,
                scale_by=2.0,
                steps=20,
                large_steps=20,
                prefix="hidiffusion_hires_fix_flux_2048",
            ),  # fmt: skip
        ],
        "upscale_image_4x": [
            note(
                "HiDiffusion Hires Fix: upscale an existing image 4x\n\n"
                f"Model: an SDXL checkpoint ({SDXL_CKPT} here) for an image of about 1024 px; use an SD1.x "
                "checkpoint for an image of about 512 px. Load your image; describe it in the positive prompt.\n\n"
                "VAE Encode turns the image into the native-size latent. "
                + GUIDED_NOTE
                + "\n\nVAE Decode (Tiled) decodes the large latent in tiles."
            ),
            *guided_hires_fix(
                SDXL_CKPT,
                positive=SDXL_PROMPT,
                native=1024,
                scale_by=4.0,
                steps=25,
                cfg=6.0,
                sampler="dpmpp_2m",
                scheduler="karras",
                prefix="hidiffusion_upscale_4x",
                image=INPUT_IMAGE,
                tiled_decode=True,
            ),
        ],
    }
)


# --- node definitions --------------------------------------------------------------------


def is_widget(spec: tuple) -> bool:
    """Whether the frontend shows this input as a widget (a value) rather than a socket (a link)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def declared_inputs(cls: Any) -> list[tuple[str, tuple]]:
    """(name, spec) in the frontend's order: required, then optional, as declared."""
    types = cls.INPUT_TYPES()
    return [(name, spec) for section in ("required", "optional") for name, spec in types.get(section, {}).items()]


def widget_names(cls: Any) -> list[str]:
    """The positions of ``widgets_values``: each widget, followed by the extra value the
    frontend stores for a control_after_generate or an upload button."""
    names = []
    for name, spec in declared_inputs(cls):
        if not is_widget(spec):
            continue
        names.append(name)
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate"):
            names.append("control_after_generate")
        if any(options.get(flag) for flag in UPLOAD_FLAGS):
            names.append("upload")
    return names


def output_names(cls: Any) -> list[tuple[str, str]]:
    """(name, type) of each output."""
    types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


def load_core_extras(registry: dict) -> None:
    """Register the comfy_extras nodes the workflows use, as ComfyUI's server does at start-up."""
    import nodes
    from harness import comfyui_path

    for node_id, file_name in CORE_EXTRAS.items():
        if node_id not in registry:
            path = str(comfyui_path() / "comfy_extras" / file_name)
            if not asyncio.run(nodes.load_custom_node(path, module_parent="comfy_extras")):
                raise RuntimeError(f"ComfyUI could not load {path}")


# --- rendering ---------------------------------------------------------------------------

COLUMN_GAP = 70
ROW_GAP = 70
TITLE_HEIGHT = 30
WIDTHS = {"Note": 440, "CLIPTextEncode": 420, "ApplyRAUNet": 360, "KSampler": 320}
WIDGET_DEFAULTS = {"control_after_generate": "fixed", "upload": "image"}
"""The frontend's own widgets: a seed's control_after_generate and an upload button (whose
saved value is the folder it uploads to)."""
EXTRA_HEIGHT = {"LoadImage": 260, "SaveImage": 240, "PreviewImage": 240}


def node_size(type_: str, cls: Any, inputs: dict[str, Any]) -> list[int]:
    """A size that fits the node's slots and widgets (the frontend keeps the saved size)."""
    width = WIDTHS.get(type_, 330)
    if cls is None:
        lines = sum(1 + len(line) // 52 for line in inputs["text"].split("\n"))
        return [width, 20 * lines + 30]
    sockets = [name for name, spec in declared_inputs(cls) if not is_widget(spec)]
    widgets = [spec for _, spec in declared_inputs(cls) if is_widget(spec)]
    rows = max(len(sockets), len(output_names(cls)))
    multiline = sum(1 for spec in widgets if len(spec) > 1 and spec[1].get("multiline"))
    height = 16 + 22 * rows + 26 * len(widget_names(cls)) + 90 * multiline + EXTRA_HEIGHT.get(type_, 0)
    return [width, max(height, 60)]


def build(name: str, specs: list[Node], registry: dict) -> dict:
    """The workflow (frontend format) for ``specs``; ids follow the layout, left to right."""
    specs = sorted(specs, key=lambda spec: (spec.column, spec.row))
    ids = {spec.key: index for index, spec in enumerate(specs, start=1)}
    if len(ids) != len(specs):
        raise ValueError(f"{name}: duplicate node keys")
    classes = {spec.key: registry.get(spec.type) for spec in specs}
    for spec in specs:
        if classes[spec.key] is None and spec.type not in FRONTEND_ONLY:
            raise ValueError(f"{name}: ComfyUI has no node {spec.type}")

    nodes_out: dict[str, dict] = {}
    links: list[list] = []
    for spec in specs:
        cls = classes[spec.key]
        entry: dict[str, Any] = {"id": ids[spec.key], "type": spec.type}
        if cls is None:
            entry.update(inputs=[], outputs=[], properties={"text": ""}, widgets_values=[spec.inputs["text"]])
            entry.update(color="#432", bgcolor="#653")
        else:
            known = {name for name, _ in declared_inputs(cls)} | set(widget_names(cls))
            unknown = set(spec.inputs) - known
            if unknown:
                raise ValueError(f"{name}: {spec.type} has no input {sorted(unknown)}")
            entry["inputs"] = [
                {"name": input_name, "type": input_spec[0], "link": None}
                for input_name, input_spec in declared_inputs(cls)
                if not is_widget(input_spec)
            ]
            entry["outputs"] = [
                {"name": out_name, "type": out_type, "links": [], "slot_index": slot}
                for slot, (out_name, out_type) in enumerate(output_names(cls))
            ]
            entry["properties"] = {"Node name for S&R": spec.type}
            entry["widgets_values"] = [widget_value(name, spec, cls, widget) for widget in widget_names(cls)]
        if spec.title:
            entry["title"] = spec.title
        nodes_out[spec.key] = entry

    for spec in specs:
        target = nodes_out[spec.key]
        for slot, socket in enumerate(target["inputs"]):
            ref = spec.inputs.get(socket["name"])
            if ref is None:
                continue
            if not isinstance(ref, Ref):
                raise ValueError(f"{name}: {spec.key}.{socket['name']} is a socket and needs a Ref")
            source = nodes_out[ref.key]
            out_slot = next(
                (i for i, out in enumerate(source["outputs"]) if ref.output in (out["name"], out["type"])), None
            )
            if out_slot is None:
                raise ValueError(f"{name}: {ref.key} has no output {ref.output}")
            link_id = len(links) + 1
            link_type = source["outputs"][out_slot]["type"]
            links.append([link_id, source["id"], out_slot, target["id"], slot, link_type])
            source["outputs"][out_slot]["links"].append(link_id)
            socket["link"] = link_id

    order = execution_order(specs, links, ids)
    groups = []
    for spec in specs:
        nodes_out[spec.key]["order"] = order[ids[spec.key]]
        nodes_out[spec.key]["mode"] = 0
        nodes_out[spec.key]["flags"] = {}
    place(specs, nodes_out, classes)
    ours = [nodes_out[spec.key] for spec in specs if spec.type in OUR_NODES]
    if ours:
        left = min(n["pos"][0] for n in ours) - 15
        top = min(n["pos"][1] for n in ours) - TITLE_HEIGHT - 45
        right = max(n["pos"][0] + n["size"][0] for n in ours) + 15
        bottom = max(n["pos"][1] + n["size"][1] for n in ours) + 15
        groups.append({"title": "HiDiffusion", "bounding": [left, top, right - left, bottom - top], "color": "#3f789e"})

    key_order = ("id", "type", "title", "pos", "size", "flags", "order", "mode", "inputs", "outputs")
    ordered_nodes = []
    for spec in specs:
        entry = nodes_out[spec.key]
        ordered = {k: entry[k] for k in key_order if k in entry}
        ordered.update({k: v for k, v in entry.items() if k not in ordered})
        for out in ordered["outputs"]:
            out["links"] = out["links"] or None
        ordered_nodes.append(ordered)
    return {
        "last_node_id": len(specs),
        "last_link_id": len(links),
        "nodes": ordered_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}},
        "version": 0.4,
    }


def widget_value(workflow: str, spec: Node, cls: Any, widget: str) -> Any:
    """The spec's value for ``widget``, else the definition's default."""
    if widget in spec.inputs:
        return spec.inputs[widget]
    if widget in WIDGET_DEFAULTS:
        return WIDGET_DEFAULTS[widget]
    declared = dict(declared_inputs(cls))
    options = declared[widget][1] if widget in declared and len(declared[widget]) > 1 else {}
    if "default" in options:
        return options["default"]
    raise ValueError(f"{workflow}: {spec.key} ({spec.type}) needs a value for {widget}")


def execution_order(specs: list[Node], links: list[list], ids: dict[str, int]) -> dict[int, int]:
    """Node id -> position in a topological order (stable: spec order among ready nodes)."""
    parents: dict[int, set[int]] = {ids[spec.key]: set() for spec in specs}
    for _, source, _, target, _, _ in links:
        parents[target].add(source)
    order: dict[int, int] = {}
    while len(order) < len(parents):
        ready = [i for i in sorted(parents) if i not in order and parents[i] <= set(order)]
        if not ready:
            raise ValueError("the workflow has a cycle")
        order[ready[0]] = len(order)
    return order


def place(specs: list[Node], nodes_out: dict[str, dict], classes: dict[str, Any]) -> None:
    """Columns left to right, nodes top to bottom by row within a column; the HiDiffusion
    column starts lower to leave room for its group's title."""
    for spec in specs:
        nodes_out[spec.key]["size"] = node_size(spec.type, classes[spec.key], spec.inputs)
    columns = sorted({spec.column for spec in specs})
    x = 0
    for column in columns:
        members = sorted((spec for spec in specs if spec.column == column), key=lambda spec: spec.row)
        y = 80 if any(spec.type in OUR_NODES for spec in members) else 0
        for spec in members:
            entry = nodes_out[spec.key]
            entry["pos"] = [x, y]
            y += entry["size"][1] + ROW_GAP
        x += max(nodes_out[spec.key]["size"][0] for spec in members) + COLUMN_GAP


def render_all(registry: dict) -> dict[str, str]:
    """File name -> JSON text, for every workflow."""
    return {
        f"{name}.json": json.dumps(build(name, specs, registry), indent=2, ensure_ascii=False) + "\n"
        for name, specs in WORKFLOWS.items()
    }


def main(check: bool) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "comfy"))
    from harness import import_comfyui, load_pack

    import_comfyui()
    registry = load_pack()
    load_core_extras(registry)
    rendered = render_all(registry)
    stale = []
    OUT_DIR.mkdir(exist_ok=True)
    for file_name, text in rendered.items():
        path = OUT_DIR / file_name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    extra = sorted(p.name for p in OUT_DIR.glob("*.json") if p.name not in rendered)
    if extra:
        sys.stderr.write(f"not made by this script (add a spec or remove): {', '.join(extra)}\n")
        return 1
    if stale:
        sys.stderr.write(f"out of date (run python scripts/make_example_workflows.py): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
