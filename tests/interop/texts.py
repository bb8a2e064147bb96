#!/usr/bin/python3
"""Texts the tokenizer checks of make interop encode: real text from data/
(banking77 queries, Bitext support requests and answers, MedQuAD questions
and answers, hh-rlhf dialogues) and hand-made hard cases (accents, NFC/NFD,
emoji, CJK and other scripts, numbers, contractions, whitespace runs, text
that looks like special tokens). Standard library only.

usage: texts.py OUT.jsonl [--per-source N]
Writes one {"text": ..., "source": ...} per line; deterministic.
"""
import csv
import gzip
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DATA = os.path.join(ROOT, "data")
MAX_CHARS = 1200  # long answers are cut: the tokenizers see every kind of text, the checks stay quick

HARD = [
    # accents and Unicode normalisation: NFC, NFD, compatibility forms
    "café", "cafe\u0301", "Cafe\u0301 au lait", "naïve façade", "Zürich Ångström", "e\u0301te\u0301",
    "A\u030a", "\u00c5", "\u212b", "ﬁne ﬂour", "ＡＢＣ１２３", "Ⅻ chapters", "x² + y³", "½ cup",
    "Ǆ digraph", "ǅ", "ß Straße STRASSE", "İstanbul ıi", "Ωmega ω", "\u1e9b\u0323",
    # emoji, joiners, flags, variation selectors
    "👍", "👍🏽 thanks!", "👨‍👩‍👧 family", "🇫🇷🇩🇪", "❤️", "I ❤ NY", "🙂🙂🙂", "a\u200db", "zero\u200bwidth",
    # CJK and other scripts
    "中文文本", "日本語のテキストです。", "한국어 텍스트", "漢字かなカナ混じり文", "Ελληνικά κείμενα", "русский текст",
    "العربية نص", "עברית", "हिन्दी पाठ", "ไทย", "tiếng Việt", "Cześć, jak się masz?",
    # numbers
    "1234567890", "3.14159", "1,000,000", "$100", "$1,234.56", "2023-10-05", "10:30pm", "0x1F", "1e-5",
    "42nd street", "v2.0.1", "+1 (555) 123-4567", "99.9%", "IPv4 192.168.0.1", "12345678901234567890",
    # contractions and punctuation
    "can't", "I'm", "they'll", "WE'VE", "she'd", "it's", "it\u2019s", "Don't STOP", "and/or", "e.g.",
    "well...", "what?!", "(parenthesised)", "\"quoted\"", "'single'", "#hashtag @user", "a_b-c.d",
    "foo@example.com", "https://example.com/path?q=1&r=2", "C++ and C#", "x<y && y>z", "-- dashes --",
    # whitespace
    "a  b", "a   b    c", " leading", "  leading two", "trailing ", "trailing  ", "   ", " ", "\t", "\t\tx",
    "line1\nline2", "a\n\nb", "a\n\n\nb", "\n", "\r\n", "x\r\ny", "mixed \t \n spaces", "end\n",
    "    indented code", "a\u00a0b", "a\u3000b",
    # text that looks like special tokens (as plain text)
    "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>user", "<bos>", "< s >", "<|begin_of_text|>",
    # long runs
    "a" * 300, "ab" * 100, "!" * 50, " " * 40 + "x", "1" * 60,
]


def take(rows, n):
    out = []
    for r in rows:
        r = r.strip() if isinstance(r, str) else r
        if r:
            out.append(r[:MAX_CHARS])
        if len(out) >= n:
            break
    return out


def banking77(n):
    with open(os.path.join(DATA, "banking77", "train.csv"), newline="", encoding="utf-8") as f:
        return take((row["text"] for row in csv.DictReader(f)), n)


def bitext(n):
    path = os.path.join(DATA, "bitext-support", "Bitext_Sample_Customer_Support_Training_Dataset.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return take((r["instruction"] for r in rows), n // 2) + take((r["response"] for r in rows), n - n // 2)


def medquad(n):
    with gzip.open(os.path.join(DATA, "medquad", "medquad-qa.jsonl.gz"), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return take((r["question"] for r in rows), n // 2) + take((r["answer"] for r in rows), n - n // 2)


def hh_rlhf(n):
    with gzip.open(os.path.join(DATA, "hh-rlhf", "harmless-base-test.jsonl.gz"), "rt", encoding="utf-8") as f:
        return take((json.loads(line)["chosen"] for _, line in zip(range(n), f)), n)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    per = int(sys.argv[sys.argv.index("--per-source") + 1]) if "--per-source" in sys.argv else 1000
    sources = [("hard", HARD), ("banking77", banking77(per)), ("bitext", bitext(per)),
               ("medquad", medquad(per)), ("hh-rlhf", hh_rlhf(per // 2))]
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        for name, texts in sources:
            for t in texts:
                out.write(json.dumps({"text": t, "source": name}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
