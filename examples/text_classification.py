"""Text classification with LoRA and AdaLoRA on MiniLM, side by side.

Uses SST-2 from ../shared/data when it is there, petl's generated sentiment data
otherwise. AdaLoRA's rank budget is reallocated during training by the trainer
(no extra call needed); the script prints where the ranks went.

    python examples/text_classification.py           # a few minutes on 2 CPU cores
    python examples/text_classification.py --quick   # seconds
"""

from __future__ import annotations

import torch
from _common import SHARED_DATA, parse_args, sentiment_splits
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import petl
from petl.core.wrapping import state_of
from petl.modeling.demo import minilm_path


def main() -> None:
    args = parse_args(__doc__)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    sst2 = SHARED_DATA / "sst2"
    if sst2.is_dir() and not args.quick:
        train_data, eval_data, source = str(sst2 / "train.tsv"), str(sst2 / "validation.tsv"), "SST-2"
    else:
        train_data, eval_data = sentiment_splits(48 if args.quick else 1500, 16 if args.quick else 400)
        source = "generated sentiment data"
    print(f"data: {source}")

    # Each with its own learning rate: AdaLoRA starts its singular values at zero and
    # needs a higher one than LoRA to move within one epoch.
    strategies = {
        "lora": (petl.LoraConfig(r=8, alpha=16), 1e-3),
        "adalora": (petl.AdaLoraConfig(init_r=12, target_r=4, alpha=16, tinit=1, tfinal=1), 5e-3),
    }
    for name, (strategy, learning_rate) in strategies.items():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        model = petl.wrap(model, strategy)
        config = petl.TrainConfig(
            epochs=1, max_steps=5 if args.quick else None, batch_size=32, learning_rate=learning_rate,
            progress_bar=not args.quick,
        )
        result = petl.train(model, train_data, eval_data, tokenizer=tokenizer, task="sequence-classification",
                            config=config, data_options={"max_length": 64})
        print(f"{name:8s} {petl.count_parameters(model)}  accuracy {result.metrics['eval_accuracy']:.3f}")
        ranks = getattr(state_of(model).strategy, "effective_ranks", None)
        if ranks is not None:
            per_layer = ranks(model)
            print(f"         AdaLoRA ranks after training: {sum(per_layer.values())} triplets in use, "
                  f"per layer {sorted(per_layer.values())}")


if __name__ == "__main__":
    main()
