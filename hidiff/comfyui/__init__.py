"""ComfyUI adapter: V3 nodes and their wiring through ModelPatcher patches and wrappers.

Modules:
    nodes       the V3 node classes and the extension entry point.
    msw_msa     MSW-MSA as an attn1 replace patch.
    run_state   per-run state via an OUTER_SAMPLE wrapper (seeded shifts, once-per-run messages).
    params      YAML overrides and input checks.
    model_info  reading the loaded model's structure and sigma scale.
"""
