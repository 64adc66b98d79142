"""The architectures of ``bench/zoo.py``: tiny transformers models with random weights.

``MODELS[name]()`` returns ``(model, inputs, key)``: the model (2 layers, hidden size 32-64,
vocabulary 320, every dropout 0), its keyword inputs (batch 2 x 12 tokens, 32 x 32 images,
400 audio samples) and the output field compared with eager (``logits`` or
``last_hidden_state``). Call ``torch.manual_seed`` first for the same weights and inputs.

Convolution and audio models are sized so that their weights outweigh one layer's activations
(swin and regnet at batch 1, regnet at 16 x 16, wav2vec2 on 400 samples), or a plan capped at a
fraction of the model's bytes would have no room for a single layer.
"""

from __future__ import annotations

import torch
import transformers as T

V = 320  # vocabulary
B, S = 2, 12  # batch, sequence length


def _ids(s: int = S) -> torch.Tensor:
    return torch.randint(0, V, (B, s))


def zero_dropout(config):
    """Set every float dropout-like attribute of ``config`` (and of its nested configs) to 0."""
    keys = ("dropout", "pdrop", "drop_path", "layerdrop", "jitter")
    for k, v in list(vars(config).items()):
        if isinstance(v, T.PretrainedConfig):
            zero_dropout(v)
        elif isinstance(v, float) and any(s in k for s in keys):
            setattr(config, k, 0.0)
    return config


def lm(cls, cfg_cls, **kw):
    """A causal language model on token ids; compares the logits."""

    def build():
        return cls(zero_dropout(cfg_cls(**kw))), {"input_ids": _ids()}, "logits"

    return build


def encoder(cls, cfg_cls, **kw):
    """A text encoder on token ids with a padding mask (the second row padded after 9 tokens)."""

    def build():
        mask = torch.ones(B, S, dtype=torch.long)
        mask[1, 9:] = 0
        inputs = {"input_ids": _ids(), "attention_mask": mask}
        return cls(zero_dropout(cfg_cls(**kw))), inputs, "last_hidden_state"

    return build


def seq2seq(cls, cfg_cls, key="last_hidden_state", **kw):
    """An encoder-decoder on 12 encoder and 7 decoder tokens."""

    def build():
        return cls(zero_dropout(cfg_cls(**kw))), {"input_ids": _ids(), "decoder_input_ids": _ids(7)}, key

    return build


def vision(cls, cfg_cls, size=32, batch=B, **kw):
    """An image model on random ``batch x 3 x size x size`` pixels."""

    def build():
        model = cls(zero_dropout(cfg_cls(**kw)))
        return model, {"pixel_values": torch.randn(batch, 3, size, size)}, "last_hidden_state"

    return build


def whisper():
    cfg = T.WhisperConfig(
        vocab_size=V, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=16, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
    )
    # input_features: (batch, mel bins, 2 x max_source_positions)
    inputs = {"input_features": torch.randn(B, 16, 32), "decoder_input_ids": _ids(7)}
    return T.WhisperModel(zero_dropout(cfg)), inputs, "last_hidden_state"


def wav2vec2():
    cfg = T.Wav2Vec2Config(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, mask_time_prob=0.0,
    )
    return T.Wav2Vec2Model(zero_dropout(cfg)), {"input_values": torch.randn(1, 400)}, "last_hidden_state"


LLAMA_LIKE = dict(
    vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)
BERT_LIKE = dict(
    vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=64,
)
T5_LIKE = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
BART_LIKE = dict(
    vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
)

MODELS = {
    # decoder-only language models
    "mistral": lm(T.MistralForCausalLM, T.MistralConfig, **LLAMA_LIKE),
    "qwen2": lm(T.Qwen2ForCausalLM, T.Qwen2Config, **LLAMA_LIKE),
    "qwen3": lm(T.Qwen3ForCausalLM, T.Qwen3Config, head_dim=16, **LLAMA_LIKE),
    "phi": lm(
        T.PhiForCausalLM, T.PhiConfig, vocab_size=V, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
    ),
    "phi3": lm(T.Phi3ForCausalLM, T.Phi3Config, pad_token_id=0, **LLAMA_LIKE),
    "gemma": lm(T.GemmaForCausalLM, T.GemmaConfig, head_dim=16, **LLAMA_LIKE),
    "gemma2": lm(T.Gemma2ForCausalLM, T.Gemma2Config, head_dim=16, sliding_window=8, **LLAMA_LIKE),
    "olmo": lm(T.OlmoForCausalLM, T.OlmoConfig, **LLAMA_LIKE),
    "stablelm": lm(T.StableLmForCausalLM, T.StableLmConfig, **LLAMA_LIKE),
    "starcoder2": lm(T.Starcoder2ForCausalLM, T.Starcoder2Config, **LLAMA_LIKE),
    "falcon": lm(
        T.FalconForCausalLM, T.FalconConfig, vocab_size=V, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4,
    ),
    "gpt_neox": lm(
        T.GPTNeoXForCausalLM, T.GPTNeoXConfig, vocab_size=V, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
    ),
    "gpt_neo": lm(
        T.GPTNeoForCausalLM, T.GPTNeoConfig, vocab_size=V, hidden_size=64, num_layers=2, num_heads=4,
        attention_types=[[["global", "local"], 1]], window_size=8, max_position_embeddings=64,
    ),
    "gptj": lm(
        T.GPTJForCausalLM, T.GPTJConfig, vocab_size=V, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
        n_positions=64,
    ),
    "gpt_bigcode": lm(
        T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig, vocab_size=V, n_embd=64, n_layer=2, n_head=4,
        n_positions=64,
    ),
    "opt": lm(
        T.OPTForCausalLM, T.OPTConfig, vocab_size=V, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64,
    ),
    "bloom": lm(T.BloomForCausalLM, T.BloomConfig, vocab_size=V, hidden_size=64, n_layer=2, n_head=4),
    # mixture of experts
    "mixtral": lm(
        T.MixtralForCausalLM, T.MixtralConfig, num_local_experts=4, num_experts_per_tok=2, **LLAMA_LIKE
    ),
    "qwen2_moe": lm(
        T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=64, **LLAMA_LIKE,
    ),
    # text encoders
    "distilbert": encoder(
        T.DistilBertModel, T.DistilBertConfig, vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=64,
    ),
    "albert": encoder(T.AlbertModel, T.AlbertConfig, embedding_size=16, **BERT_LIKE),
    "roberta": encoder(T.RobertaModel, T.RobertaConfig, **BERT_LIKE),
    "deberta_v2": encoder(T.DebertaV2Model, T.DebertaV2Config, **BERT_LIKE),
    "electra": encoder(T.ElectraModel, T.ElectraConfig, embedding_size=16, **BERT_LIKE),
    "mpnet": encoder(T.MPNetModel, T.MPNetConfig, **BERT_LIKE),
    # encoder-decoders
    "t5": seq2seq(  # decoder_start_token_id: for generate (zoo.py's generate mode)
        T.T5ForConditionalGeneration, T.T5Config, key="logits", decoder_start_token_id=0, **T5_LIKE
    ),
    "mt5": seq2seq(T.MT5Model, T.MT5Config, **T5_LIKE),
    "bart": seq2seq(T.BartForConditionalGeneration, T.BartConfig, key="logits", **BART_LIKE),
    "pegasus": seq2seq(T.PegasusModel, T.PegasusConfig, **BART_LIKE),
    # vision
    "clip_vision": vision(
        T.CLIPVisionModel, T.CLIPVisionConfig, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=8,
    ),
    "deit": vision(
        T.DeiTModel, T.DeiTConfig, image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ),
    "dinov2": vision(
        T.Dinov2Model, T.Dinov2Config, image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, mlp_ratio=2,
    ),
    "swin": vision(
        T.SwinModel, T.SwinConfig, batch=1, image_size=32, patch_size=4, embed_dim=32, depths=[1, 1],
        num_heads=[2, 2], window_size=4,
    ),
    "segformer": vision(
        T.SegformerModel, T.SegformerConfig, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[2, 2],
    ),
    "convnext": vision(T.ConvNextModel, T.ConvNextConfig, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "mobilenet_v2": vision(T.MobileNetV2Model, T.MobileNetV2Config, image_size=32, depth_multiplier=0.25),
    "regnet": vision(
        T.RegNetModel, T.RegNetConfig, batch=1, size=16, embedding_size=16, hidden_sizes=[32, 64],
        depths=[1, 1], groups_width=8,
    ),
    # audio
    "whisper": whisper,
    "wav2vec2": wav2vec2,
}
