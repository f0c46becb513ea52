"""MELLA: dual-source data, LoRA fine-tuning, serving and evaluation of MLLMs for low-resource languages."""
