"""Show the installed (IA)^3 plugin at work: `pip install ./examples/custom_strategy`, then run this."""

from __future__ import annotations

from transformers import BertConfig, BertForSequenceClassification

import petl


def main() -> None:
    assert "ia3_hooks" in petl.available(), "install the plugin first: pip install ./examples/custom_strategy"
    print("registered strategies:", ", ".join(petl.available()))
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    model = petl.wrap(BertForSequenceClassification(config), "ia3_hooks")
    print("ia3_hooks trainable parameters:", petl.count_parameters(model))
    merged = petl.merge(model)
    print("merged back into a plain", type(merged).__name__)


if __name__ == "__main__":
    main()
