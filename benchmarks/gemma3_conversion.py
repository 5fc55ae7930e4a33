"""Check that petl's converted Gemma 3 270M folder is the GGUF model: same logits on Chinese text.

petl loads the demo model ``"gemma3"`` from a plain safetensors folder that
:func:`petl.modeling.demo.gemma3_safetensors_path` converts once from the package's GGUF
file. This script (1) converts it if the cache has no folder yet (timed), (2) loads the
causal LM from the GGUF file and from the folder and compares their logits on Chinese
sentences, and (3) does the same for ``Gemma3TextForSequenceClassification``, with the
folder model's fresh ``score`` head copied from the GGUF model's so the heads agree.

    python benchmarks/gemma3_conversion.py --threads 1

Writes ``benchmarks/results/clue_gemma/conversion.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SENTENCES = ["孩子跟谁睡，就是谁的孩子", "物流很快，早上下单，下午就到了。包装也很高档。", "身上至少一件衣服"]
OUT = Path(__file__).resolve().parent / "results" / "clue_gemma"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import petl.threads

    petl.threads.configure(threads=args.threads)
    import torch
    import transformers as tf

    from petl.bench.environment import collect_environment, environment_section, load_average
    from petl.files import atomic_write_text
    from petl.modeling import demo

    t0 = time.perf_counter()
    folder = demo.gemma3_safetensors_path()
    convert_s = time.perf_counter() - t0
    source = demo.gemma3_path()
    gguf = {"gguf_file": demo.GEMMA3_GGUF}
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    t0 = time.perf_counter()
    gguf_tokenizer = tf.AutoTokenizer.from_pretrained(source, **gguf)
    gguf_tokenizer_s = time.perf_counter() - t0
    same_ids = all(tokenizer(s).input_ids == gguf_tokenizer(s).input_ids for s in SENTENCES)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    result: dict = {"folder": str(folder), "convert_s": round(convert_s, 1), "same_token_ids": same_ids,
                    "gguf_tokenizer_load_s": round(gguf_tokenizer_s, 1), "sentences": SENTENCES,
                    "input_ids_shape": list(batch["input_ids"].shape)}
    for head, auto in (("causal-lm", tf.AutoModelForCausalLM), ("seq-cls", tf.AutoModelForSequenceClassification)):
        options = {"num_labels": 3, "pad_token_id": tokenizer.pad_token_id} if head == "seq-cls" else {}
        t0 = time.perf_counter()
        from_gguf = auto.from_pretrained(source, dtype=torch.float32, **gguf, **options).eval()
        gguf_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        from_folder = auto.from_pretrained(folder, dtype=torch.float32, **options).eval()
        folder_s = time.perf_counter() - t0
        if head == "seq-cls":
            from_folder.score.load_state_dict(from_gguf.score.state_dict())
        with torch.no_grad():
            a, b = from_gguf(**batch).logits, from_folder(**batch).logits
        result[head] = {"class": type(from_folder).__name__, "gguf_load_s": round(gguf_s, 1),
                        "folder_load_s": round(folder_s, 1), "max_abs_diff": float((a - b).abs().max()),
                        "max_abs_logit": float(a.abs().max()), "equal": bool(torch.equal(a, b))}
        print(head, result[head], flush=True)
        del from_gguf, from_folder
    result["environment"] = collect_environment()
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    result["load_average_end"] = load_average()
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "conversion.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    converted = f"took {result['convert_s']} s" if convert_s > 5 else "was cached"
    lines = [
        "# Gemma 3 270M: GGUF file vs petl's converted safetensors folder", "",
        f"Command: `{result['command']}`. Conversion {converted}; "
        f"the GGUF tokenizer alone took {result['gguf_tokenizer_load_s']} s to load. "
        f"Token ids on {len(SENTENCES)} Chinese sentences identical: {same_ids}.", "",
        "| head | class | GGUF load s | folder load s | max abs logit diff | max abs logit | bit-identical |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for head in ("causal-lm", "seq-cls"):
        r = result[head]
        lines.append(f"| {head} | {r['class']} | {r['gguf_load_s']} | {r['folder_load_s']} | {r['max_abs_diff']:.3g} "
                     f"| {r['max_abs_logit']:.3g} | {r['equal']} |")
    lines += ["", "The seq-cls folder model's fresh `score` head was copied from the GGUF model's before comparing.",
              "", *environment_section(result["environment"])]
    atomic_write_text(OUT / "conversion.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
