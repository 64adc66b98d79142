"""Export the annotated graphs shipped in bench/graphs/, for offline planning experiments.

Each model is built on the ``meta`` device (no memory, random-weight layout of the published
config), captured by Dynamo at batch 1, analysed by autopart's passes and saved as JSON:

- ``gpt2.json``: GPT-2 124M (``GPT2LMHeadModel(GPT2Config())``), 128 tokens, float32;
- ``bert.json``: BERT-base (``BertModel(BertConfig())``), 128 tokens, float32;
- ``llama3-8b.json``: a Llama-3-8B-shaped model (32 layers, hidden 4096, 32 heads, 8 KV heads,
  FFN 14336, vocabulary 128256), 128 tokens, bfloat16;
- ``resnet50.json``: ResNet-50 (``ResNetModel(ResNetConfig())``), one 224x224 image, float32.

    python bench/export_graphs.py [--out bench/graphs]
    autopart solve --graph bench/graphs/llama3-8b.json --topology 8xh100-nvlink --max-memory cuda:0=10GB ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from autopart.dynamo import plan_model_backend


def models():
    import transformers as tf

    def ids(vocab):
        return torch.randint(0, vocab, (1, 128), device="meta")

    yield "gpt2", lambda: tf.GPT2LMHeadModel(tf.GPT2Config()), lambda: {"input_ids": ids(50257), "use_cache": False}
    yield "bert", lambda: tf.BertModel(tf.BertConfig()), lambda: {"input_ids": ids(30522)}
    llama = tf.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
    )
    yield (
        "llama3-8b",
        lambda: tf.LlamaForCausalLM(llama).to(torch.bfloat16),
        lambda: {"input_ids": ids(128256), "use_cache": False},
    )
    yield "resnet50", lambda: tf.ResNetModel(tf.ResNetConfig()), lambda: {
        "pixel_values": torch.randn(1, 3, 224, 224, device="meta")
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "graphs"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, build, inputs in models():
        torch._dynamo.reset()
        with torch.device("meta"):
            model = build().eval()
        planner = plan_model_backend(model, inputs(), topology="8xh100-nvlink")
        graph = planner.compilations[0].analysis.graph
        graph = type(graph)(name=name, nodes=graph.nodes, storages=graph.storages)
        graph.save(out / f"{name}.json")
        weights = sum(n.resident_bytes for n in graph.nodes)
        print(f"{name}: {len(graph.nodes)} nodes, {weights / 1e9:.2f} GB of weights -> {out / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
