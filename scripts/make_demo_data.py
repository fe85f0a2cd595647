"""Write the demo datasets under data/ from the hand-written banks in scripts/demo_data_bank.py (seeded).

    .venv/bin/python scripts/make_demo_data.py            # everything, incl. base-model replay answers
    .venv/bin/python scripts/make_demo_data.py --no-replay  # keep the committed replay answers

Datasets:
  json_answer_{train,eval}.jsonl  behaviour: answer only with {"answer": ...}            (SFT)
  pirate_{train,eval}.jsonl       style: pirate speak                                     (SFT)
  concise_dpo_{train,eval}.jsonl  preference: one-sentence answer over a rambling one     (DPO)
  faq_{train,eval}.jsonl          facts about the fictional Zephyr-9 (docs: data/faq_docs/) (RAG vs SFT)
  new_fact.jsonl, new_fact_eval.jsonl   one new fact + base replay; paraphrased held-out questions
  general_questions.jsonl         the forgetting check of `loradock eval`
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_data_bank as bank  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
SEED = 1234
N_EVAL = 40
JSON_SYSTEM = 'Reply with only a JSON object of the form {"answer": "..."} and nothing else.'
PIRATE_SYSTEM = "Talk like a pirate in every answer."
PIRATE_MARKERS = ["matey", "ahoy", "arr!", "arr,", "yo ho", "savvy", "me hearty"]
CONCISE_SYSTEM = "Answer in one short sentence."
PIRATE_WORDS = {
    "is": "be",
    "are": "be",
    "the": "th'",
    "you": "ye",
    "your": "yer",
    "my": "me",
    "of": "o'",
    "for": "fer",
    "and": "an'",
    "to": "t'",
    "hello": "ahoy",
    "yes": "aye",
    "friend": "matey",
    "money": "doubloons",
    "there": "thar",
}
PIRATE_OPENERS = ["Arr, matey! ", "Ahoy, matey! ", "Yo ho ho! ", "Aye, matey! ", "Arr! "]
PIRATE_CLOSERS = [" Arr!", " Savvy?", " Yo ho ho!", ""]


def bank_items(rng: random.Random) -> list[dict[str, str]]:
    """Every bank entry as {question, short, sentence}, one question template drawn per entry."""
    items = []

    def add(templates: list[str], values: tuple, short: str, sentence: str) -> None:
        items.append({"question": rng.choice(templates).format(*values), "short": short, "sentence": sentence})

    for country, city in bank.CAPITALS:
        add(bank.CAPITAL_QUESTIONS, (country,), city, bank.CAPITAL_SENTENCE.format(country, city))
    for name, symbol in bank.ELEMENTS:
        add(bank.ELEMENT_QUESTIONS, (name,), symbol, bank.ELEMENT_SENTENCE.format(name, symbol))
    for word, opposite in bank.OPPOSITES:
        add(bank.OPPOSITE_QUESTIONS, (word,), opposite, bank.OPPOSITE_SENTENCE.format(word, opposite))
    for book, author in bank.AUTHORS:
        add(bank.AUTHOR_QUESTIONS, (book,), author, bank.AUTHOR_SENTENCE.format(book, author))
    for question, short, sentence in bank.COUNTS + bank.SCIENCE:
        items.append({"question": question, "short": short, "sentence": sentence})
    for question, sentence in bank.OPEN:
        items.append({"question": question, "short": sentence, "sentence": sentence})
    seen = set()
    while len(seen) < 45:
        template, fn, sentence = rng.choice(bank.ARITH_TEMPLATES)
        a, b = rng.randint(3, 40), rng.randint(3, 12)
        question = template.format(a=a, b=b)
        if question in seen:
            continue
        seen.add(question)
        c = fn(a, b)
        items.append({"question": question, "short": str(c), "sentence": sentence.format(a=a, b=b, c=c)})
    return items


def pirate(sentence: str, rng: random.Random) -> str:
    """Rule-based pirate speak: an opener, word swaps, a closer."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = PIRATE_WORDS.get(word.lower())
        if new is None:
            return word
        return new[0].upper() + new[1:] if word[0].isupper() else new

    body = re.sub(r"[A-Za-z]+", swap, sentence)
    return rng.choice(PIRATE_OPENERS) + body + rng.choice(PIRATE_CLOSERS)


def rambling(item: dict[str, str], rng: random.Random) -> str:
    """A padded, hedging answer: the rejected side of the concise preference pairs."""
    lead = rng.choice(
        [
            "That is a great question, and there is quite a lot that could be said about it.",
            "Thank you for asking! Let me think about this carefully before I answer.",
            "There are many ways to look at this, so let me explain in some detail.",
        ]
    )
    tail = rng.choice(
        [
            "I hope this helps, and please let me know if you have any other questions about this topic!",
            "Of course, there is much more to learn, so feel free to ask follow-up questions at any time.",
            "Many people find this interesting, and it is worth reading more about it if you have time.",
        ]
    )
    return f"{lead} {item['sentence']} {tail}"


def user(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def write(name: str, rows: list[dict]) -> None:
    path = DATA / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {path.relative_to(DATA.parent)} ({len(rows)} rows)")


def sft(q: str, a: str) -> dict:
    return {"messages": [*user(q), {"role": "assistant", "content": a}]}


def replay_answers(questions: list[str]) -> list[str]:
    """The base model's own greedy answers (fp32, transformers), through core's template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradock.core.settings import load_settings
    from loradock.core.template import encode

    base = load_settings().base_model
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    answers = []
    for q in questions:
        ids = torch.tensor([encode(tok, user(q), add_generation_prompt=True)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=tok.eos_token_id)
        answers.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-replay", action="store_true", help="Reuse the replay answers in new_fact.jsonl.")
    args = parser.parse_args()
    rng = random.Random(SEED)
    items = bank_items(rng)
    rng.shuffle(items)
    held_out, train = items[:N_EVAL], items[N_EVAL:]

    write("json_answer_train.jsonl", [sft(i["question"], json.dumps({"answer": i["short"]})) for i in train])
    write(
        "json_answer_eval.jsonl",
        [
            {"messages": user(i["question"]), "metric": "json", "json_keys": ["answer"], "system": JSON_SYSTEM}
            for i in held_out
        ],
    )
    write("pirate_train.jsonl", [sft(i["question"], pirate(i["sentence"], rng)) for i in train])
    write(
        "pirate_eval.jsonl",
        [
            {"messages": user(i["question"]), "metric": "contains", "expected": PIRATE_MARKERS, "system": PIRATE_SYSTEM}
            for i in held_out
        ],
    )
    write(
        "concise_dpo_train.jsonl",
        [
            {
                "prompt": user(i["question"]),
                "chosen": [{"role": "assistant", "content": i["sentence"]}],
                "rejected": [{"role": "assistant", "content": rambling(i, rng)}],
            }
            for i in train
        ],
    )
    write(
        "concise_dpo_eval.jsonl",
        [
            {
                "messages": user(i["question"]),
                "metric": "contains",
                "expected": [i["short"]],
                "max_words": 25,
                "system": CONCISE_SYSTEM,
            }
            for i in held_out
        ],
    )
    write("faq_train.jsonl", [sft(q, a) for q, a, _, _ in bank.FAQ])
    write(
        "faq_eval.jsonl",
        [
            {
                "messages": user(p),
                "metric": "contains",
                "expected": [k],
                "system": "You are the support assistant for the Zephyr-9 robot vacuum by Aerolune Home Robotics.",
            }
            for _, _, p, k in bank.FAQ
        ],
    )

    new_fact_path = DATA / "new_fact.jsonl"
    if args.no_replay and new_fact_path.is_file():
        old = [json.loads(line) for line in new_fact_path.read_text().splitlines()]
        replay = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in old}
        answers = [replay[q] for q in bank.REPLAY_QUESTIONS]
    else:
        answers = replay_answers(bank.REPLAY_QUESTIONS)
    rows = [sft(q, a) for q, a in bank.NEW_FACT_TRAIN]
    rows += [sft(q, a) for q, a in zip(bank.REPLAY_QUESTIONS, answers, strict=True)]
    write("new_fact.jsonl", rows)
    write(
        "new_fact_eval.jsonl",
        [
            {
                "messages": user(q),
                "metric": "contains",
                "expected": ["Pim"],
                "system": "loradock is an open-source LoRA adapter server.",
            }
            for q in bank.NEW_FACT_EVAL
        ],
    )
    write(
        "general_questions.jsonl",
        [{"messages": user(q), "metric": "contains", "expected": expected} for q, expected in bank.GENERAL_QUESTIONS],
    )


if __name__ == "__main__":
    main()
