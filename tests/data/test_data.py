"""Reading, tokenising and batching data for the four tasks, with exact label checks."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from petl.data import (
    TASKS,
    ColumnNotFoundError,
    DataError,
    DataFileError,
    LabelError,
    TaskData,
    UnknownFormatError,
    UnknownTaskError,
    load_task_data,
    read_dataset,
)
from petl.errors import ConfigError, PetlError
from petl.modeling.demo import minilm_path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLS, SEP, PAD = 101, 102, 0  # MiniLM's (BERT uncased) special ids


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def bos_tok():
    """A Llama-like word-level tokenizer: adds <s> in front, has </s>, has no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "translate", ":", "cat", "chat", "hello", "world", "a", "b"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


# --- reading ---------------------------------------------------------------------------------


def test_read_files_of_every_format(tmp_path):
    tsv = read_dataset(write(tmp_path / "a.tsv", 'sentence\tlabel\nit \'s "great" , NA\t1\nbad\t0\n'))
    assert tsv.column_names == ["sentence", "label"]
    assert tsv["sentence"] == ['it \'s "great" , NA', "bad"]  # bare quotes and NA kept as text
    assert tsv["label"] == [1, 0]
    csv = read_dataset(write(tmp_path / "a.csv", 'text,label\n"a, b",pos\nc,neg\n'))
    assert csv["text"] == ["a, b", "c"] and csv["label"] == ["pos", "neg"]
    lines = read_dataset(jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 2}, {"text": "y", "label": 0}]))
    assert lines["label"] == [2, 0]
    listed = read_dataset(write(tmp_path / "a.json", json.dumps({"data": [{"text": "x"}, {"text": "y"}]})))
    assert listed["text"] == ["x", "y"]
    columns = read_dataset(write(tmp_path / "b.json", json.dumps({"text": ["x", "y"], "label": [0, 1]})))
    assert columns["label"] == [0, 1]


def test_read_conll(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter B-PER\nBlackburn I-PER\n"
    conll = read_dataset(write(tmp_path / "ner.txt", text))
    assert conll.column_names == ["tokens", "tags"]
    assert conll["tokens"] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert conll["tags"] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    with pytest.raises(DataFileError, match="Line 2 .* needs a word and a tag"):
        read_dataset(write(tmp_path / "bad.conll", "EU B-ORG\nrejects\n"))


def test_read_folders_dicts_and_datasets(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\na\t0\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\nb\t1\nc\t0\n")
    assert len(read_dataset(tmp_path, split="validation")) == 2  # "dev" is found for "validation"
    with pytest.raises(DataFileError, match="no file for the 'test' split.*dev.tsv, train.tsv"):
        read_dataset(tmp_path, split="test")
    ds = datasets.Dataset.from_dict({"text": ["a"]})
    assert read_dataset(ds) is ds
    dd = datasets.DatasetDict({"train": ds, "valid": ds})
    assert read_dataset(dd, split="validation") is ds
    with pytest.raises(DataFileError, match="no 'test' split; it has 'train', 'valid'"):
        read_dataset(dd, split="test")


def test_read_errors_say_what_and_how(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        read_dataset(tmp_path / "missing.csv")
    with pytest.raises(UnknownFormatError, match=r"'\.xlsx'.*petl reads \.csv"):
        read_dataset(write(tmp_path / "a.xlsx", "x"))
    with pytest.raises(UnknownFormatError, match="Did you mean '.tsv'"):
        read_dataset(write(tmp_path / "a.tsvv", "x"))
    with pytest.raises(DataFileError, match="line 2"):
        read_dataset(write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": \n'))
    with pytest.raises(DataFileError, match="no rows"):
        read_dataset(write(tmp_path / "empty.csv", "text,label\n"))
    for error in (DataFileError, UnknownFormatError):
        assert issubclass(error, PetlError)


# --- sequence classification -------------------------------------------------------------------


def test_sequence_classification_string_labels(tmp_path, tok):
    train = write(tmp_path / "train.csv", "text,label\ngood film,pos\nbad film,neg\nok film,neutral\n")
    evalf = write(tmp_path / "eval.csv", "text,label\nfine,pos\n")
    data = load_task_data("sequence-classification", train, evalf, tokenizer=tok)
    assert isinstance(data, TaskData) and data.task == "sequence-classification"
    assert data.label_names == ["neg", "neutral", "pos"] and data.num_labels == 3  # sorted unique
    assert [x["labels"] for x in data.train] == [2, 0, 1]
    assert data.eval[0]["labels"] == 2  # one mapping for both splits
    assert data.train[0]["input_ids"] == tok("good film")["input_ids"]
    named = load_task_data("sequence-classification", train, tokenizer=tok, label_names=["pos", "neg", "neutral"])
    assert [x["labels"] for x in named.train] == [0, 1, 2] and named.eval is None
    with pytest.raises(LabelError, match=r"\['neutral'\] .* not in label_names \['pos', 'neg'\]"):
        load_task_data("sequence-classification", train, tokenizer=tok, label_names=["pos", "neg"])


def test_sequence_classification_int_labels_and_range(tmp_path, tok):
    train = jsonl(tmp_path / "t.jsonl", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 2}])
    data = load_task_data("sequence-classification", train, tokenizer=tok)
    assert data.num_labels == 3 and data.label_names is None
    assert [x["labels"] for x in data.train] == [0, 2]
    with pytest.raises(LabelError, match=r"labels \[2\] .* outside \[0, 2\) for label_names"):
        load_task_data("sequence-classification", train, tokenizer=tok, label_names=["neg", "pos"])
    with pytest.raises(LabelError, match=r"outside \[0, 2\) for num_labels=2"):
        load_task_data("sequence-classification", train, tokenizer=tok, num_labels=2)
    negative = jsonl(tmp_path / "n.jsonl", [{"sentence": "a", "label": -1}])
    with pytest.raises(LabelError, match=r"\[-1\]"):
        load_task_data("sequence-classification", train, negative, tokenizer=tok)
    floats = jsonl(tmp_path / "f.jsonl", [{"sentence": "a", "label": 0.5}])
    with pytest.raises(LabelError, match="float"):
        load_task_data("sequence-classification", floats, tokenizer=tok)


def test_sequence_pairs_and_class_label_names(tok):
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"premise": ["a cat"], "hypothesis": ["an animal"], "label": [0]}, features=features
    )
    data = load_task_data("sequence-classification", ds, ds, tokenizer=tok)
    assert data.label_names == ["entailment", "neutral", "contradiction"] and data.num_labels == 3
    expected = tok("a cat", "an animal")
    assert data.train[0]["input_ids"] == expected["input_ids"]
    assert data.train[0]["token_type_ids"] == expected["token_type_ids"] and 1 in expected["token_type_ids"]


def test_missing_columns_list_what_was_found(tok):
    ds = datasets.Dataset.from_dict({"review_text": ["a"], "stars": [1]})
    with pytest.raises(ColumnNotFoundError) as info:
        load_task_data("sequence-classification", ds, tokenizer=tok)
    message = str(info.value)
    assert "'review_text', 'stars'" in message and "--text-column" in message and "text_column=" in message
    with pytest.raises(ColumnNotFoundError, match="no label column.*--label-column"):
        load_task_data("sequence-classification", ds, tokenizer=tok, text_column="review_text")
    with pytest.raises(ColumnNotFoundError, match="Did you mean 'review_text'"):
        load_task_data("sequence-classification", ds, tokenizer=tok, text_column="review_txt", label_column="stars")
    ok = load_task_data("sequence-classification", ds, tokenizer=tok, text_column="review_text", label_column="stars")
    assert ok.train[0]["labels"] == 1
    bad_eval = datasets.Dataset.from_dict({"text": ["a"], "stars": [1]})
    with pytest.raises(ColumnNotFoundError, match="evaluation data has no text column"):
        load_task_data(
            "sequence-classification", ds, bad_eval, tokenizer=tok, text_column="review_text", label_column="stars"
        )
    nones = datasets.Dataset.from_dict({"text": ["a", None], "label": [0, 1]})
    with pytest.raises(DataError, match="Row 1 .* None"):
        load_task_data("sequence-classification", nones, tokenizer=tok)


def test_unknown_task_and_bad_options(tok):
    with pytest.raises(UnknownTaskError, match="Did you mean 'token-classification'") as info:
        load_task_data("token-clasification", None, tokenizer=tok)
    assert isinstance(info.value, ConfigError) and ", ".join(TASKS) in str(info.value)
    with pytest.raises(ConfigError, match="No data"):
        load_task_data("seq2seq", None, tokenizer=tok)
    with pytest.raises(ConfigError, match="max_length"):
        load_task_data("seq2seq", "x.csv", tokenizer=tok, max_length=0)


# --- token classification ----------------------------------------------------------------------

NER_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_token_labels_go_to_first_sub_token(tmp_path, tok):
    conll = write(tmp_path / "train.conll", "Nadim B-PER\nLadki I-PER\nvisited O\nWolfsburg B-LOC\n. O\n\nhi O\n")
    data = load_task_data("token-classification", conll, tokenizer=tok, label_names=NER_NAMES)
    first = data.train[0]
    # [CLS] nad ##im lad ##ki visited wolf ##sburg . [SEP]
    assert tok.convert_ids_to_tokens(first["input_ids"]) == [
        "[CLS]",
        "nad",
        "##im",
        "lad",
        "##ki",
        "visited",
        "wolf",
        "##sburg",
        ".",
        "[SEP]",
    ]
    assert first["labels"] == [-100, 1, -100, 2, -100, 0, 3, -100, 0, -100]
    assert data.num_labels == 5 and data.label_names == NER_NAMES
    # Truncation keeps the alignment of what is left.
    short = load_task_data("token-classification", conll, tokenizer=tok, label_names=NER_NAMES, max_length=5)
    assert short.train[0]["labels"] == [-100, 1, -100, 2, -100]
    # Without names, string tags get their sorted unique values.
    plain = load_task_data("token-classification", conll, tokenizer=tok)
    assert plain.label_names == ["B-LOC", "B-PER", "I-PER", "O"]
    assert plain.train[0]["labels"] == [-100, 1, -100, 2, -100, 3, 0, -100, 3, -100]


def test_token_classification_int_tags_from_datasets(tok):
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_NAMES)),
        }
    )
    ds = datasets.Dataset.from_dict({"tokens": [["Peter", "Wolfsburg"]], "ner_tags": [[1, 3]]}, features=features)
    data = load_task_data("token-classification", ds, tokenizer=tok)
    assert data.label_names == NER_NAMES
    assert data.train[0]["labels"] == [-100, 1, 3, -100, -100]
    bad = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [[0, 7]]})
    with pytest.raises(LabelError, match=r"\[7\] .* outside \[0, 5\)"):
        load_task_data("token-classification", bad, tokenizer=tok, label_names=NER_NAMES)
    text = datasets.Dataset.from_dict({"tokens": ["EU rejects"], "tags": [["B-ORG", "O"]]})
    with pytest.raises(DataError, match="Row 0 .* 'EU rejects' .* needs a list per row"):
        load_task_data("token-classification", text, tokenizer=tok)
    mismatch = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "tags": [["O"]]})
    with pytest.raises(DataError, match="2 words but 1 tags"):
        load_task_data("token-classification", mismatch, tokenizer=tok)


# --- causal LM and seq2seq ----------------------------------------------------------------------


def test_causal_lm_masks_the_prompt_exactly(tmp_path, tok, bos_tok):
    rows = [{"prompt": "translate : cat", "completion": " chat"}, {"prompt": "hello", "completion": "world a b"}]
    path = jsonl(tmp_path / "lm.jsonl", rows)
    data = load_task_data("causal-lm", path, tokenizer=bos_tok)
    # ids: <s>=1 </s>=2 translate=3 :=4 cat=5 chat=6 hello=7 world=8 a=9 b=10
    assert data.train[0] == {
        "input_ids": [1, 3, 4, 5, 6, 2],
        "attention_mask": [1] * 6,
        "labels": [-100, -100, -100, -100, 6, 2],
    }
    assert data.train[1]["input_ids"] == [1, 7, 8, 9, 10, 2]
    assert data.train[1]["labels"] == [-100, -100, 8, 9, 10, 2]
    assert data.num_labels is None and data.label_names is None
    # A BERT tokenizer: the prefix is [CLS], the end token falls back to [SEP].
    bert = load_task_data("causal-lm", path, tokenizer=tok)
    prompt = tok("translate : cat", add_special_tokens=False)["input_ids"]
    completion = tok(" chat", add_special_tokens=False)["input_ids"]
    assert bert.train[0]["input_ids"] == [CLS] + prompt + completion + [SEP]
    assert bert.train[0]["labels"] == [-100] * (1 + len(prompt)) + completion + [SEP]
    # Truncation; a prompt that fills max_length leaves nothing to learn, so the example is dropped.
    cut = load_task_data("causal-lm", path, tokenizer=bos_tok, max_length=4)
    assert [x["labels"] for x in cut.train] == [[-100, -100, 8, 9]]


def test_causal_lm_plain_text_trains_on_every_token(bos_tok):
    ds = datasets.Dataset.from_dict({"text": ["hello world", "a"]})
    data = load_task_data("causal-lm", ds, ds, tokenizer=bos_tok)
    assert data.train[0] == {"input_ids": [1, 7, 8, 2], "attention_mask": [1, 1, 1, 1], "labels": [1, 7, 8, 2]}
    batch = data.collator([data.train[0], data.train[1]])
    # No pad token: inputs are padded with EOS, masked out by the attention mask; labels with -100.
    assert batch["input_ids"].tolist() == [[1, 7, 8, 2], [1, 9, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[1, 7, 8, 2], [1, 9, 2, -100]]


def test_seq2seq_labels_are_the_tokenised_target(tmp_path, tok):
    path = jsonl(
        tmp_path / "s2s.jsonl", [{"source": "a long text", "target": "short"}, {"source": "x", "target": "y z"}]
    )
    data = load_task_data("seq2seq", path, tokenizer=tok)
    assert data.train[0]["input_ids"] == tok("a long text")["input_ids"]
    assert data.train[0]["labels"] == tok(text_target="short")["input_ids"]
    batch = data.collator([data.train[0], data.train[1]])
    assert batch["input_ids"].shape == (2, 5) and batch["labels"].shape == (2, 4)  # each padded to its own longest
    assert batch["labels"][0].tolist() == tok(text_target="short")["input_ids"] + [-100]
    same = datasets.Dataset.from_dict({"text": ["a"], "summary": ["b"], "other": ["c"]})
    with pytest.raises(ColumnNotFoundError, match="target_column"):
        load_task_data("seq2seq", same, tokenizer=tok, target_column="text")


# --- collator and limits ----------------------------------------------------------------------


def test_collator_pads_exactly(tok):
    ds = datasets.Dataset.from_dict({"sentence": ["a b c", "a"], "label": [1, 0]})
    data = load_task_data("sequence-classification", ds, tokenizer=tok)
    batch = data.collator([data.train[0], data.train[1]])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    a, b, c = tok("a b c", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"].tolist() == [[CLS, a, b, c, SEP], [CLS, a, SEP, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0] * 5, [0] * 5]
    assert batch["labels"].tolist() == [1, 0] and all(t.dtype == torch.long for t in batch.values())
    ner = datasets.Dataset.from_dict({"tokens": [["a", "b"], ["a"]], "tags": [["B-PER", "I-PER"], ["O"]]})
    tagged = load_task_data("token-classification", ner, tokenizer=tok)
    labels = tagged.collator([tagged.train[0], tagged.train[1]])["labels"]
    assert labels.tolist() == [[-100, 0, 1, -100], [-100, 2, -100, -100]]


def test_limit_takes_the_first_examples(tok):
    ds = datasets.Dataset.from_dict({"text": [f"w{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    data = load_task_data("sequence-classification", ds, ds, tokenizer=tok, limit=3)
    assert len(data.train) == 3 and len(data.eval) == 3
    assert data.train[2]["input_ids"] == tok("w2")["input_ids"]


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")
def test_real_sst2_and_conll2003(tok):
    sst2 = load_task_data(
        "sequence-classification",
        SHARED_DATA / "sst2/train.tsv",
        SHARED_DATA / "sst2/validation.tsv",
        tokenizer=tok,
        max_length=64,
    )
    assert (len(sst2.train), len(sst2.eval), sst2.num_labels) == (2821, 872, 2)
    for split, expected in (("train", 14041), ("valid", 3250), ("test", 3453)):
        conll = read_dataset(SHARED_DATA / f"conll2003/{split}.txt")
        assert len(conll) == expected, split
    ner = load_task_data(
        "token-classification",
        SHARED_DATA / "conll2003/train.txt",
        SHARED_DATA / "conll2003",
        tokenizer=tok,
        max_length=64,
        limit=200,
    )
    assert ner.label_names == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]
    assert len(ner.train) == 200 and len(ner.eval) == 200  # the folder gives valid.txt for "validation"
    # The first sentence: EU B-ORG, rejects O, German B-MISC, call O, to O, boycott O, British B-MISC, lamb O, . O
    assert ner.train[0]["labels"] == [-100, 2, 8, 1, 8, 8, 8, 1, 8, 8, -100]


# --- the batches feed real (tiny) models -------------------------------------------------------


def test_hub_names_go_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": ["a"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_dataset("nyu-mll/glue:sst2", split="validation")["text"] == ["a"]
    assert read_dataset("imdb")["text"] == ["a"]
    assert calls == [("nyu-mll/glue", "sst2", "validation"), ("imdb", None, "train")]

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataFileError, match="not a local file or folder.*offline"):
        read_dataset("imdb")


TINY_CASES = [
    ("bert", "seq-cls", "sequence-classification"),
    ("bert", "token-cls", "token-classification"),
    ("llama", "causal-lm", "causal-lm"),
    ("gpt2", "causal-lm", "causal-lm"),
    ("t5", "seq2seq-lm", "seq2seq"),
    ("bart", "seq2seq-lm", "seq2seq"),
]


@pytest.mark.parametrize(("arch", "head", "task"), TINY_CASES)
def test_batches_feed_tiny_models(arch, head, task, bos_tok):
    import tiny_models as T

    from petl.metrics import evaluator_for

    rows = {
        "sequence-classification": {"text": ["hello world", "a b a", "chat"], "label": ["x", "y", "z"]},
        "token-classification": {
            "tokens": [["hello", "world"], ["a", "b", "a"], ["cat"]],
            "tags": [["B-PER", "I-PER"], ["O", "B-PER", "O"], ["O"]],
        },
        "causal-lm": {"prompt": ["translate : cat", "hello", "a"], "completion": ["chat", "world a b", "b"]},
        "seq2seq": {"source": ["translate : cat", "hello", "a b"], "target": ["chat", "world a b", "b"]},
    }[task]
    data = load_task_data(task, datasets.Dataset.from_dict(rows), tokenizer=bos_tok)
    assert data.num_labels in (None, T.NUM_LABELS)
    batch = data.collator([data.train[i] for i in range(3)])
    model = T.build(arch, head)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)
    if task == "causal-lm":
        # The model shifts the labels itself: its loss is the cross-entropy of the completion tokens only.
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = labels != -100
        assert keep.sum() == 1 + 1 + 3 + 1 + 1 + 1  # chat </s> | world a b </s> | b </s>
        expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
        torch.testing.assert_close(out.loss, expected)
    evaluator = evaluator_for(task, data.label_names)
    evaluator.add_batch(logits=out.logits, labels=batch["labels"])
    scores = evaluator.compute()
    expected_keys = {
        "sequence-classification": {"accuracy", "f1"},
        "token-classification": {"precision", "recall", "f1", "accuracy"},
    }.get(task, set())
    assert set(scores) == expected_keys and all(0.0 <= v <= 1.0 for v in scores.values())
