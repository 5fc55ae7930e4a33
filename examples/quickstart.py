"""Quick start: wrap, count, train a few steps, save, load, merge.

    python examples/quickstart.py            # about a minute on 2 CPU cores
    python examples/quickstart.py --quick    # seconds
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import parse_args, sentiment_splits
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import petl
from petl.modeling.demo import minilm_path


def load_base() -> torch.nn.Module:
    # The same seed gives the same freshly initialised classifier, so a fresh base can take the adapter.
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)


def main() -> None:
    args = parse_args(__doc__)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train_data, eval_data = sentiment_splits(32 if args.quick else 1000, 16 if args.quick else 300)

    model = petl.wrap(load_base(), "lora", r=8, alpha=16, dropout=0.05)
    print("trainable / total:", petl.count_parameters(model))

    config = petl.TrainConfig(
        epochs=1, max_steps=4 if args.quick else None, batch_size=16, learning_rate=1e-3,
        output_dir=None, progress_bar=not args.quick,
    )
    result = petl.train(model, train_data, eval_data, tokenizer=tokenizer, task="sequence-classification",
                        config=config, data_options={"max_length": 48})
    print(f"accuracy after {result.global_step} steps: {result.metrics['eval_accuracy']:.3f}")

    folder = petl.save(model, Path(args.output) / "quickstart-lora")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"saved the adapter to {folder} ({size / 1024:.0f} kB)")

    batch = tokenizer(["not bad at all.", "the plot was very dull."], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        wrapped_logits = model(**batch).logits
        reloaded = petl.load(load_base(), folder).eval()
        assert torch.equal(reloaded(**batch).logits, wrapped_logits), "a loaded adapter reproduces the outputs"
        merged = petl.merge(reloaded)
        gap = (merged(**batch).logits - wrapped_logits).abs().max().item()
    print(f"loaded: identical outputs; merged into a plain {type(merged).__name__}: max difference {gap:.1e}")


if __name__ == "__main__":
    main()
