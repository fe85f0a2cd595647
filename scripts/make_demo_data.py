"""Write the demo datasets under data/ from the hand-written banks in scripts/demo_data_bank.py (seeded).

    .venv/bin/python scripts/make_demo_data.py                # reuse data/base_answers.jsonl
    .venv/bin/python scripts/make_demo_data.py --base-answers-from http://127.0.0.1:8000  # re-ask the server
    .venv/bin/python scripts/make_demo_data.py --concise-answers-from http://127.0.0.1:8000  # DPO rejects

Two datasets use the base model's own answers, asked once of the served base: the replay rows of
new_fact.jsonl (data/base_answers.jsonl, temperature 0) and the rejected side of concise_dpo_train.jsonl
(data/concise_base_answers.jsonl: the greedy answer and sampled ones to every concise training prompt).

Datasets:
  json_answer_{train,eval}.jsonl  behaviour: answer only with {"answer": ...}            (SFT)
  pirate_{train,eval}.jsonl       style: pirate speak                                     (SFT)
  concise_dpo_{train,eval}.jsonl  preference: one short sentence over the base's own long answers (DPO)
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
# The concise rule (eval: a right answer in at most this many words); rejects: the greedy + sampled answers.
CONCISE_MAX_WORDS, CONCISE_SAMPLES, CONCISE_TEMPERATURE, CONCISE_TOKENS = 25, 2, 0.8, 160
N_REPLAY_ASKED, N_REPLAY, BASE_TOKENS, MIN_EXTRA_WORDS = 72, 48, 200, 8
CONCISE_KEPT_OUT = {"What is a rainbow?"}  # near-copy of a held-out CONCISE_EVAL prompt
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


def user(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def write(name: str, rows: list[dict]) -> None:
    path = DATA / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {path.relative_to(DATA.parent)} ({len(rows)} rows)")


def sft(q: str, a: str) -> dict:
    return {"messages": [*user(q), {"role": "assistant", "content": a}]}


def ask_base(questions: list[str], server: str) -> dict[str, str | None]:
    """The served base's temperature-0 answer to each question (None when it did not finish)."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=server.rstrip("/") + "/v1", api_key="none", timeout=600)
    base = next(m.id for m in client.models.list().data if getattr(m, "parent", None) is None)

    def one(q: str) -> str | None:
        r = client.chat.completions.create(model=base, messages=user(q), temperature=0, max_tokens=BASE_TOKENS)
        return r.choices[0].message.content if r.choices[0].finish_reason == "stop" else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(questions, pool.map(one, questions), strict=True))


def base_answers(questions: list[str], server: str | None) -> dict[str, str | None]:
    """Answers from data/base_answers.jsonl, or freshly asked of a server (and written back)."""
    path = DATA / "base_answers.jsonl"
    if server is None:
        if not path.is_file():
            raise SystemExit(f"{path} is missing; pass --base-answers-from URL of a running loradock server")
        known = {r["question"]: r["answer"] for r in map(json.loads, path.read_text().splitlines())}
        return {q: known.get(q) for q in questions}
    answers = ask_base(sorted(set(questions)), server)
    write("base_answers.jsonl", [{"question": q, "answer": a} for q, a in sorted(answers.items())])
    return answers


def last_full_sentence(text: str) -> str:
    """Text cut after its last complete sentence (an answer stopped by max_tokens ends mid-sentence)."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]].strip() if ends else text.strip()


def ask_base_samples(questions: list[str], server: str) -> dict[str, list[str]]:
    """The served base's greedy answer and CONCISE_SAMPLES seeded samples to each question, distinct."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=server.rstrip("/") + "/v1", api_key="none", timeout=600)
    base = next(m.id for m in client.models.list().data if getattr(m, "parent", None) is None)

    def one(job: tuple[str, int]) -> str:
        q, k = job
        sampling = {"temperature": CONCISE_TEMPERATURE, "top_p": 0.95, "seed": SEED + k} if k else {"temperature": 0}
        r = client.chat.completions.create(model=base, messages=user(q), max_tokens=CONCISE_TOKENS, **sampling)
        text = r.choices[0].message.content or ""
        return text.strip() if r.choices[0].finish_reason == "stop" else last_full_sentence(text)

    jobs = [(q, k) for q in questions for k in range(CONCISE_SAMPLES + 1)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(one, jobs))
    answers: dict[str, list[str]] = {q: [] for q in questions}
    for (q, _), text in zip(jobs, texts, strict=True):
        if text and text not in answers[q]:
            answers[q].append(text)
    return answers


def concise_answers(questions: list[str], server: str | None) -> dict[str, list[str]]:
    """The base's own answers to the concise prompts: data/concise_base_answers.jsonl, or asked afresh."""
    path = DATA / "concise_base_answers.jsonl"
    if server is None:
        if not path.is_file():
            raise SystemExit(f"{path} is missing; pass --concise-answers-from URL of a running loradock server")
        known = {r["question"]: r["answers"] for r in map(json.loads, path.read_text().splitlines())}
        return {q: known.get(q, []) for q in questions}
    answers = ask_base_samples(sorted(set(questions)), server)
    write("concise_base_answers.jsonl", [{"question": q, "answers": a} for q, a in sorted(answers.items())])
    return answers


def concise_items(train: list[dict[str, str]]) -> list[dict[str, str]]:
    """Training prompts of the concise preference: the bank's training split plus the open CONCISE_TRAIN."""
    extra = [{"question": q, "short": s, "sentence": s} for q, s in bank.CONCISE_TRAIN]
    return [i for i in train if i["question"] not in CONCISE_KEPT_OUT] + extra


def past_one_sentence(text: str, min_words: int) -> str | None:
    """The answer cut at the first sentence end with at least min_words words (None when it is shorter):
    the base going on past where a concise answer stops, without the rest of its ramble."""
    for end in re.finditer(r"(?<!\d)[.!?](?=\s|$)", text):
        cut = text[: end.end()].strip()
        if len(cut.split()) >= min_words:
            return cut
    return None


def concise_pairs(items: list[dict[str, str]], answers: dict[str, list[str]]) -> list[dict]:
    """Chosen = the one-sentence answer; rejected = each distinct way the base itself goes on past one sentence.
    Prompts the base already answers briefly give no pair (there is nothing to move away from)."""
    rows = []
    for item in items:
        limit = len(item["sentence"].split()) + MIN_EXTRA_WORDS
        cuts = [past_one_sentence(own, limit) for own in answers.get(item["question"], [])]
        for own in dict.fromkeys(c for c in cuts if c):
            rows.append(
                {
                    "prompt": user(item["question"]),
                    "chosen": [{"role": "assistant", "content": item["sentence"]}],
                    "rejected": [{"role": "assistant", "content": own}],
                }
            )
    return rows


def answer_keys(item: dict[str, str]) -> list[str]:
    """Strings any right answer contains: the short answer without "The", its number word, or OPEN's keywords."""
    if item["question"] in bank.OPEN_KEYWORDS:
        return bank.OPEN_KEYWORDS[item["question"]]
    short = re.sub(r"^the ", "", item["short"], flags=re.IGNORECASE)
    return [short, bank.NUMBER_WORDS[short]] if short in bank.NUMBER_WORDS else [short]


def concise_eval(held_out: list[dict[str, str]]) -> list[dict]:
    """Held-out rows: the bank's held-out split (facts and open questions) and the open CONCISE_EVAL prompts."""
    keyed = [(i["question"], answer_keys(i)) for i in held_out] + bank.CONCISE_EVAL
    return [
        {
            "messages": user(q),
            "metric": "contains",
            "expected": keys,
            "max_words": CONCISE_MAX_WORDS,
            "system": CONCISE_SYSTEM,
        }
        for q, keys in keyed
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-answers-from", metavar="URL", help="Re-ask the base on this running server.")
    parser.add_argument(
        "--concise-answers-from", metavar="URL", help="Re-ask the base for the concise DPO rejects on this server."
    )
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
    replay_qs = [i["question"] for i in random.Random(SEED + 1).sample(items, N_REPLAY_ASKED)]
    answers = base_answers([i["question"] for i in train] + replay_qs, args.base_answers_from)
    # Rejected = what the base really says (greedy and sampled): the preference then moves the model away from
    # its own habit (on-policy), not from a padding style it never uses.
    concise = concise_items(train)
    own = concise_answers([i["question"] for i in concise], args.concise_answers_from)
    write("concise_dpo_train.jsonl", concise_pairs(concise, own))
    write("concise_dpo_eval.jsonl", concise_eval(held_out))
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

    # Replay: bank questions the fact adapter must keep answering as the base does (with the base's own
    # answers, right or wrong). Answers the base did not finish within BASE_TOKENS are left out.
    replay = [(q, answers[q]) for q in replay_qs if answers.get(q)][:N_REPLAY]
    write("new_fact.jsonl", [sft(q, a) for q, a in bank.NEW_FACT_TRAIN] + [sft(q, a) for q, a in replay])
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
