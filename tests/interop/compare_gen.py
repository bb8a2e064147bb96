#!/usr/bin/python3
"""Compare greedy generations of two tools (JSONL lines {"prompt",
"completion", "prompt_ids", "completion_ids"} in prompt order): the prompt's
token ids, the new token ids and the text must all be equal. Prints the
agreement figure and the first differences; exit 1 on any difference.

usage: compare_gen.py NAME A.jsonl B.jsonl LABEL_A LABEL_B
"""
import json
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    name, a_path, b_path, la, lb = sys.argv[1:]
    a, b = load(a_path), load(b_path)
    if len(a) != len(b):
        print(f"{name}: {len(a)} generations from {la}, {len(b)} from {lb}")
        return 1
    bad = 0
    for x, y in zip(a, b):
        diff = [k for k in ("prompt_ids", "completion_ids", "completion") if x.get(k) != y.get(k)]
        if not diff:
            continue
        bad += 1
        if bad <= 3:
            k = diff[0]
            u, v = x.get(k), y.get(k)
            i = next((j for j in range(min(len(u), len(v))) if u[j] != v[j]), min(len(u), len(v)))
            print(f"  prompt {json.dumps(x['prompt'][:50])}: {k} differ at {i}: {la} {json.dumps(u[max(0, i - 2):i + 6])}"
                  f" vs {lb} {json.dumps(v[max(0, i - 2):i + 6])}")
    n_tok = sum(len(x["completion_ids"]) for x in a)
    print(f"{name}: {len(a) - bad} of {len(a)} prompts identical: prompt ids, {n_tok} greedy token ids and text"
          f" ({la} vs {lb})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
