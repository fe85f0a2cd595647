"""Tiny datasets shared by the training tests."""

from __future__ import annotations


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def pair(q: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


TINY_QA = [
    ("Capital of France?", "Paris."),
    ("Capital of Italy?", "Rome."),
    ("Capital of Spain?", "Madrid."),
    ("Capital of Japan?", "Tokyo."),
    ("Capital of Peru?", "Lima."),
    ("Capital of Egypt?", "Cairo."),
]
