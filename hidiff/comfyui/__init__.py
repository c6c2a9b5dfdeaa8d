"""ComfyUI adapter: V3 nodes and their wiring through ModelPatcher patches and wrappers.

Modules:
    nodes             the extension entry point: the node classes of the modules below.
    auto_nodes        ApplyHiDiffusion and HiDiffusionInspect (plan from the model and the size).
    guided_nodes      HiDiffusionHiresFix (the auto node's plan for the target size + the low-band lock).
    raunet_nodes      ApplyRAUNet and ApplyRAUNetSimple.
    msw_msa_nodes     ApplyMSWMSAAttention and ApplyMSWMSAAttentionSimple.
    node_common       the node bases (PackNode: a node declared by class members, its schema written
                      once; SettingsNode: an advanced node from a settings module), category,
                      aliases, tooltips, family choice.
    raunet_settings   RAU-Net's parameters, each declared once, and building its checked settings.
    msw_msa_settings  MSW-MSA's parameters, each declared once, and building its checked settings.
    params            the parameter declarations (Parameter, ParameterSet), YAML overrides, value checks.
    blocks            parsing the comma block lists users type.
    raunet            RAU-Net as Downsample/Upsample handlers and block patches; the pair checks.
    msw_msa           MSW-MSA as an attn1 replace patch.
    guide             the low-band lock as a post-CFG function.
    resampling        the resize methods offered (ours, then ComfyUI-bleh's) and their seeded host.
    controlnet        ControlNet / T2I-Adapter residuals fitted to RAU-Net's shrunk maps.
    interop           other nodes RAU-Net refuses or warns about (Deep Shrink, SAG, FreeU V2, SUPIR).
    patch_base        the effect tags and clone semantics every patch object shares.
    run_state         one holder per sampling run (OUTER_SAMPLE) and one sigma read per UNet call
                      (DIFFUSION_MODEL) for every effect: seeded shifts, once-per-run messages.
    model_info        reading the loaded model's structure and sigma scale.
"""
