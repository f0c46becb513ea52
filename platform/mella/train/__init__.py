"""LoRA SFT of an MLLM on D_know ∪ D_ling per language (paper 3.3, 4.1, appendix C).

Modules: ``config`` (TrainConfig, Table 7 defaults), ``prompts`` (prompt pool + evaluation prompts),
``backbones`` (Qwen2-VL, InternVL2), ``samples`` (chat template, image tokens, label mask, truncation),
``trainer`` (Ray Train + DeepSpeed ZeRO, mixes), ``artifacts`` (PEFT adapter + metadata).
"""
