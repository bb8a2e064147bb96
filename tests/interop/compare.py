#!/usr/bin/python3
"""Compare two files of token ids (one JSON array per line, one line per text)
made from the same texts by two tools; print the agreement figure and the
first differences, exit 1 on any difference.

usage: compare.py NAME TEXTS.jsonl A.ids B.ids [LABEL_A LABEL_B]
"""
import json
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    name, texts_path, a_path, b_path = sys.argv[1:5]
    la, lb = sys.argv[5:7] if len(sys.argv) >= 7 else ("A", "B")
    with open(texts_path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    a, b = load(a_path), load(b_path)
    if not (len(texts) == len(a) == len(b)):
        print(f"{name}: line counts differ: {len(texts)} texts, {len(a)} from {la}, {len(b)} from {lb}")
        return 1
    # null: the reference left this text out (e.g. special-token text, which prepare never turns into tokens)
    kept = [i for i in range(len(texts)) if a[i] is not None and b[i] is not None]
    bad = [i for i in kept if a[i] != b[i]]
    left = f"; {len(texts) - len(kept)} left out" if len(kept) < len(texts) else ""
    print(f"{name}: {len(kept) - len(bad)} of {len(kept)} texts identical ({la} vs {lb}{left})")
    for i in bad[:5]:
        x, y = a[i], b[i]
        k = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), min(len(x), len(y)))
        print(f"  text {i + 1} {json.dumps(texts[i][:60])}: first difference at token {k}:"
              f" {la} {x[max(0, k - 2):k + 4]} vs {lb} {y[max(0, k - 2):k + 4]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
