"""A tiny random-weight multi-target Marian MT checkpoint for laptops, tests and ``make e2e``.

Layout: what ``AutoModelForSeq2SeqLM`` / ``AutoTokenizer.from_pretrained`` read (``config.json``,
``model.safetensors``, ``tokenizer.json`` + ``tokenizer_config.json``); target languages by Marian's ``>>xxx<<``
tokens (``mella.stages.enrich.translate.lang_code(code, "marian")``) for every language of
``mella/data/languages.yaml``, as the multi-target OPUS-MT models do. The tokenizer is a byte-level BPE
(tokenizers library) trained offline on :data:`CORPUS`, so every script tokenizes without ``<unk>``. RANDOM
weights: it exercises the seq2seq backend and the D_ling metrics; what it writes is noise.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "A screenshot of an installer dialog with a list of languages and two buttons.",
    "A dog runs across the green park.",
    "Two children play football on the beach at sunset.",
    "A red car is parked in front of an old house.",
    "The market sells fresh fruit and vegetables.",
    "Con chó chạy qua công viên xanh.",
    "Hai đứa trẻ chơi bóng đá trên bãi biển.",
    "สุนัขวิ่งข้ามสวนสีเขียว",
    "เด็กสองคนเล่นฟุตบอลบนชายหาด",
    "개가 초록 공원을 가로질러 달린다.",
    "Egy kutya fut a zöld parkban.",
    "Собака бежит по зелёному парку.",
    "Pes běží zeleným parkem.",
    "كلب يركض عبر الحديقة الخضراء.",
    "Пас трчи преко зеленог парка.",
]


def write_tiny_marian(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny Marian (1 encoder + 1 decoder layer, d_model 32, ~1200-token BPE) into ``path``."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    from mella.languages import load_languages
    from mella.stages.enrich.translate import lang_code

    path = Path(path)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<unk>"] + [f">>{lang_code(c, 'marian')}<<" for c in load_languages()]
    tok.train_from_iterator(
        CORPUS * 3,
        trainers.BpeTrainer(
            vocab_size=1200, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    cfg = MarianConfig(
        vocab_size=len(fast),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        decoder_start_token_id=fast.pad_token_id,
        forced_eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(seed)
    MarianMTModel(cfg).save_pretrained(path)
    return path
