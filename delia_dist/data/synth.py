"""Small task and diverse data the project makes itself, so the main job and the tests
run on a fresh machine with no downloads.

- translation: a toy language ("Fenish") that maps word by word to English, so BLEU
  moves when a model learns it;
- format: DELIA's hallucination-judging task with the new token <sep> standing for the
  answer format {'thought': ..., 'hallucination': 'yes'|'no'}; the label is learnable
  (the response contradicts the stated fact or not);
- diverse: varied instruction/answer chats (the stand-in for self-sampled data);
- paraphrases: rule-made rewrites of each task instruction that keep every placeholder
  (`delia data diversify` makes real ones through an LLM).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from .. import atomic

ENGLISH = ("the cat dog house tree river city child woman man sees likes finds has is "
           "big small red green old new quick slow and with near under").split()
FENISH = ("ta kalo dumo husa trea riva sita kinda vima mano seer likar fyndar hafar er "
          "stor lit rauda graen gamal ny snar hvaeg og med naer undir").split()
TO_ENGLISH = dict(zip(FENISH, ENGLISH))

TRANSLATION_INSTRUCTION = "Translate the following Fenish text into English.\n{source}"
FORMAT_INSTRUCTION = ("Read the fact and the answer, then judge whether the answer is a hallucination. "
                      "Reply in the <sep> format.\nFact: {fact}\nAnswer: {answer}")

_TRANSLATION_PARAPHRASES = [
    "Please render this Fenish passage in English:\n{source}",
    "English translation of the Fenish below, please.\n{source}",
    "You are a translator. Convert the text from Fenish to English and output only the translation.\n{source}",
    "{source}\nWhat is the English version of the Fenish sentence above?",
    "Give me the English for this Fenish text:\n{source}",
]
_FORMAT_PARAPHRASES = [
    "Is the answer below a hallucination given the fact? Use the <sep> format.\nFact: {fact}\nAnswer: {answer}",
    "Fact: {fact}\nAnswer: {answer}\nCheck the answer against the fact and respond following <sep>.",
    "Judge the answer for hallucination (follow the <sep> format).\nFact: {fact}\nAnswer: {answer}",
    "Using the <sep> format, decide whether this answer contradicts the fact.\nFact: {fact}\nAnswer: {answer}",
]
_TOPICS = ["rivers", "cats", "cities", "trees", "numbers", "colors", "houses", "children", "weather", "music"]
_QUESTIONS = ["What do you know about {t}?", "Write a short note on {t}.", "Explain {t} to a child.",
              "Give three facts about {t}.", "Why are {t} interesting?", "Describe {t} in one sentence."]


def fenish_sentence(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(FENISH) for _ in range(rng.randint(3, 8))]
    return " ".join(words), " ".join(TO_ENGLISH[w] for w in words)


def translation_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src, ref = fenish_sentence(rng)
        out.append({"instruction": TRANSLATION_INSTRUCTION, "fields": {"source": src}, "response": ref,
                    "meta": {"task": "translation"}})
    return out


def format_answer(thought: str, label: str) -> str:
    """The DELIA answer form: a Python-dict string with single quotes."""
    return str({"thought": thought, "hallucination": label})


def format_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing, color = rng.choice(ENGLISH[:10]), rng.choice(["red", "green", "big", "small", "old", "new"])
        other = rng.choice([c for c in ["red", "green", "big", "small", "old", "new"] if c != color])
        halluc = rng.random() < 0.5
        answer = f"the {thing} is {other if halluc else color}"
        thought = (f"the fact says {color} but the answer says {other}" if halluc
                   else f"the answer agrees with the fact that it is {color}")
        out.append({"instruction": FORMAT_INSTRUCTION,
                    "fields": {"fact": f"the {thing} is {color}", "answer": answer},
                    "response": format_answer(thought, "yes" if halluc else "no"),
                    "meta": {"task": "format", "label": "yes" if halluc else "no"}})
    return out


def diverse_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(_TOPICS)
        q = rng.choice(_QUESTIONS).format(t=topic)
        a = " ".join(rng.choice(ENGLISH + _TOPICS) for _ in range(rng.randint(8, 60)))
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    "meta": {"source": "synthetic-diverse"}})
    return out


def paraphrase_lines() -> list[dict]:
    return [{"original": TRANSLATION_INSTRUCTION, "paraphrases": _TRANSLATION_PARAPHRASES},
            {"original": FORMAT_INSTRUCTION, "paraphrases": _FORMAT_PARAPHRASES}]


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: every vocabulary the tasks use."""
    texts = []
    for r in translation_records(300, seed) + format_records(300, seed):
        texts += [r["instruction"], *r["fields"].values(), r["response"]]
    for r in diverse_records(300, seed):
        texts += [m["content"] for m in r["messages"]]
    for p in paraphrase_lines():
        texts += p["paraphrases"]
    return texts


# The main job's task on a real model: the same judging task over a wider vocabulary, with
# a one-line instruction (a 135M paraphraser copes with one line; its placeholders survive).
REAL_FORMAT_INSTRUCTION = ("Judge whether the answer is a hallucination given the fact, and reply in the "
                           "<sep> format. Fact: {fact} Answer: {answer}")
_THINGS = ("car house apple river shirt door cup bird book lamp road hat boat chair flower "
           "kite fence bottle train coat").split()
_PROPS = "red blue green yellow black white big small old new long short".split()


def real_format_records(n: int, seed: int, instruction: str = REAL_FORMAT_INSTRUCTION) -> list[dict]:
    """Half hallucinations (the answer names another property than the fact), half not."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        thing, prop = rng.choice(_THINGS), rng.choice(_PROPS)
        halluc = i % 2 == 0
        other = rng.choice([p for p in _PROPS if p != prop]) if halluc else prop
        thought = (f"the fact says {prop} but the answer says {other}" if halluc
                   else f"the answer agrees with the fact that it is {prop}")
        out.append({"instruction": instruction, "fields": {"fact": f"the {thing} is {prop}",
                                                           "answer": f"the {thing} is {other}"},
                    "response": format_answer(thought, "yes" if halluc else "no"),
                    "meta": {"task": "format", "label": "yes" if halluc else "no"}})
    rng.shuffle(out)
    return out


def prepare_real_task(root: str | Path, n_train: int, n_eval: int, seed: int = 0) -> dict[str, Path]:
    """Task files for the real-model main job under root/data: training records, the
    instruction to paraphrase, and the evaluation pool (instructions set by
    `split_paraphrases`). Train and eval draws use different seeds."""
    data = Path(root) / "data"
    return {"train": write_jsonl(data / "downstream_train.jsonl", real_format_records(n_train, seed + 1)),
            "instructions": write_jsonl(data / "instructions.jsonl", [{"instruction": REAL_FORMAT_INSTRUCTION}]),
            "eval_pool": write_jsonl(data / "eval_pool.jsonl", real_format_records(n_eval, seed + 101))}


def split_paraphrases(paraphrases: str | Path, eval_pool: str | Path, train_out: str | Path,
                      eval_out: str | Path, heldout: int) -> tuple[int, int]:
    """The last `heldout` paraphrases of every instruction are kept out of training and
    become the evaluation instructions (round-robin over the pool): the evaluation asks in
    wordings the model never trained on. Returns (train, held-out) paraphrase counts."""
    rows = [json.loads(l) for l in Path(paraphrases).read_text().splitlines() if l.strip()]
    held: dict[str, list[str]] = {}
    train_rows = []
    for r in rows:
        if len(r["paraphrases"]) <= heldout:
            raise ValueError(f"{paraphrases}: {len(r['paraphrases'])} paraphrases of {r['original'][:60]!r}; "
                             f"need more than the {heldout} held out")
        held[r["original"]] = r["paraphrases"][-heldout:]
        train_rows.append({"original": r["original"], "paraphrases": r["paraphrases"][:-heldout]})
    pool = [json.loads(l) for l in Path(eval_pool).read_text().splitlines() if l.strip()]
    missing = {p["instruction"] for p in pool} - held.keys()
    if missing:
        raise ValueError(f"{paraphrases} has no paraphrases for {sorted(missing)[0][:60]!r}")
    counters: dict[str, int] = {}
    for p in pool:
        k = counters.get(p["instruction"], 0)
        counters[p["instruction"]] = k + 1
        p["instruction"] = held[p["instruction"]][k % heldout]
    write_jsonl(Path(train_out), train_rows)
    write_jsonl(Path(eval_out), pool)
    return sum(len(r["paraphrases"]) for r in train_rows), sum(len(v) for v in held.values())


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def prepare_workspace(root: str | Path, *, n_train: int = 200, n_eval: int = 40, n_diverse: int = 4000,
                      seed: int = 0) -> dict[str, Path]:
    """Tokenizer, task data, shards and paraphrases for a tiny DELIA run under root.

    Layout matches configs/tiny_cpu.yaml with run_dir=root."""
    from transformers import AutoTokenizer

    from ..model.tiny import train_tokenizer
    from . import ShardWriter

    root = Path(root)
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer(tok_dir, tokenizer_corpus(seed) + [" ".join(FENISH), " ".join(ENGLISH)], vocab_size=600)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    data = root / "data"
    train = translation_records(n_train // 2, seed + 1) + format_records(n_train // 2, seed + 2)
    paths = {
        "tokenizer": tok_dir,
        "train": write_jsonl(data / "downstream_train.jsonl", train),
        "eval_translation": write_jsonl(data / "eval_translation.jsonl", translation_records(n_eval, seed + 101)),
        "eval_format": write_jsonl(data / "eval_format.jsonl", format_records(n_eval, seed + 102)),
        "diverse": write_jsonl(data / "diverse.jsonl", diverse_records(n_diverse, seed + 3)),
        "paraphrases": write_jsonl(data / "paraphrases.jsonl", paraphrase_lines()),
    }
    for name, records in (("downstream", train), ("diverse", None)):
        out = root / "shards" / name
        if (out / "manifest.json").is_file():
            continue
        rows = records if records is not None else [json.loads(l) for l in paths["diverse"].read_text().splitlines()]
        with ShardWriter(out, tokenizer, max_shard_bytes=1 << 20) as w:
            for r in rows:
                w.write(r)
    paths["shards"] = root / "shards"
    return paths
