"""Widget values of RAU-Net and MSW-MSA that several ComfyUI tests share, declared once.

The SD1.5 RAU-Net values are the seed's with longer ranges (RAD to 60 %, CA to 40 %) so that
short test runs have steps with and without each part; the SDXL ones use the official
pairs. Tests that need another value override one key (``dict(RAUNET_SD15, end_time=...)``).
"""

from __future__ import annotations

RAUNET_SD15 = {
    "input_blocks": "3",
    "output_blocks": "8",
    "time_mode": "percent",
    "start_time": 0.0,
    "end_time": 0.6,
    "upscale_mode": "bicubic",
    "ca_start_time": 0.0,
    "ca_end_time": 0.4,
    "ca_input_blocks": "4",
    "ca_output_blocks": "8",
    "ca_upscale_mode": "bicubic",
    "ca_downscale_mode": "avg_pool2d",
    "ca_downscale_factor": 2.0,
    "two_stage_upscale_mode": "disabled",
}
RAUNET_SDXL = dict(RAUNET_SD15, output_blocks="5", ca_output_blocks="5")
"""The official SDXL pairs: RAD at input 3 / output 5, CA at input 4 / output 5."""

MSW_SD15 = {
    "input_blocks": "1,2",
    "middle_blocks": "",
    "output_blocks": "9,10,11",
    "time_mode": "percent",
    "start_time": 0.0,
    "end_time": 1.0,
}
MSW_SDXL = dict(MSW_SD15, input_blocks="4,5", output_blocks="3,4,5")
