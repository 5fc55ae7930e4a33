"""Named-entity recognition with bottleneck adapters (Pfeiffer) on MiniLM.

Trains on a slice of CoNLL-2003 from ../shared/data when it is there (a tiny
hand-written set otherwise) and reports entity-level F1, computed offline.

    python examples/ner_bottleneck.py           # a few minutes on 2 CPU cores
    python examples/ner_bottleneck.py --quick   # seconds
"""

from __future__ import annotations

import datasets
import torch
from _common import SHARED_DATA, parse_args
from transformers import AutoModelForTokenClassification, AutoTokenizer

import petl
from petl.modeling.demo import minilm_path

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

TINY = [
    (["Ada", "Lovelace", "lived", "in", "London", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
    (["Siemens", "opened", "an", "office", "in", "Paris", "."], ["B-ORG", "O", "O", "O", "O", "B-LOC", "O"]),
    (["Marie", "Curie", "worked", "in", "Warsaw", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
    (["The", "Reuters", "report", "was", "in", "English", "."], ["O", "B-ORG", "O", "O", "O", "B-MISC", "O"]),
]


def tiny_split(copies: int) -> datasets.Dataset:
    rows = TINY * copies
    return datasets.Dataset.from_dict({"tokens": [r[0] for r in rows], "tags": [r[1] for r in rows]})


def main() -> None:
    args = parse_args(__doc__)
    conll = SHARED_DATA / "conll2003"
    if conll.is_dir() and not args.quick:
        train_data, eval_data = str(conll / "train.txt"), str(conll / "valid.txt")
        limits = {"limit": 2000}
        print("data: CoNLL-2003, first 2,000 sentences of each split")
    else:
        train_data, eval_data, limits = tiny_split(8), tiny_split(1), {}
        print("data: a tiny hand-written set")

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        minilm_path(), num_labels=len(TAGS), id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)}
    )
    model = petl.wrap(model, "bottleneck", variant="pfeiffer", reduction_factor=8)
    print("trainable / total:", petl.count_parameters(model))

    config = petl.TrainConfig(
        epochs=2, max_steps=4 if args.quick else None, batch_size=16, learning_rate=2e-3,
        metric_for_best="eval_f1", progress_bar=not args.quick,
    )
    result = petl.train(model, train_data, eval_data, tokenizer=tokenizer, task="token-classification",
                        config=config, data_options={"max_length": 64, "label_names": TAGS, **limits})
    metrics = result.metrics
    print(f"entity F1 {metrics['eval_f1']:.3f} (precision {metrics['eval_precision']:.3f}, "
          f"recall {metrics['eval_recall']:.3f})")


if __name__ == "__main__":
    main()
