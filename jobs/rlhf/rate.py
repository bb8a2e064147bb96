#!/usr/bin/env python3
"""The people in the loop of jobs/rlhf-round.sh: candidates for raters, a
terminal prompt where a person picks the best and the worst answer, and
their choices as preference pairs.

  rate.py candidates GEN TEST SAMPLES OUT
        generate's lines (--samples SAMPLES answers per prompt, in order) for
        the prompts of TEST (jobs/rlhf/bitext.py's test.jsonl format) as one
        line per message: {"id", "prompt", "intent", "candidates": [...]}
  rate.py ask CANDIDATES CHOICES [--script]
        asks for each message which answer is best and which worst (b w, s to
        skip, q to stop; choices so far are kept, and a second run goes on
        where the first stopped); --script: a stand-in rater (see scripted)
        answers instead of a person, and says so
  rate.py pairs CANDIDATES CHOICES OUT
        {"prompt", "chosen": best, "rejected": worst} for `shardtune prepare`
  rate.py judge ANSWERS
        the scripted rater's mean score of answers (bitext.py answers format)

The scripted rater stands in for people in the demo only. Its taste: an
answer should name what the customer asked about (the words of the message's
intent label, e.g. cancel and order, matched on their first 5 letters), and
be a finished sentence; a person would judge much more.
"""
import json
import os
import re
import sys


def scripted(intent, answer):
    words = [w[:5] for w in intent.split("_") if len(w) > 2]
    text = answer.lower()
    named = sum(w in text for w in words)
    finished = bool(re.search(r"[.!?:]$", answer.strip()))
    return named + 0.5 * finished


def candidates(gen, test, samples, out):
    tests = [json.loads(l) for l in open(test, encoding="utf-8")]
    # a sampled answer can end inside a character (sentencepiece's byte tokens):
    # generate writes those bytes as they are, read them as U+FFFD
    gens = [json.loads(l) for l in open(gen, encoding="utf-8", errors="replace")]
    samples = int(samples)
    with open(out, "w", encoding="utf-8") as f:
        for k in range(len(gens) // samples):
            group = gens[k * samples:(k + 1) * samples]
            t = tests[k]
            if any(g["prompt"] != t["prompt"] for g in group):
                sys.exit(f"{gen}: line {k * samples + 1} does not answer {test} line {k + 1}")
            f.write(json.dumps({"id": k, "prompt": t["instruction"], "intent": t["intent"],
                                "candidates": [g["completion"].strip() for g in group]}, ensure_ascii=False) + "\n")


def ask(cands, choices, script):
    done = set()
    if os.path.exists(choices):
        done = {json.loads(l)["id"] for l in open(choices, encoding="utf-8")}
    items = [json.loads(l) for l in open(cands, encoding="utf-8")]
    if script:
        print("rate.py: a SCRIPTED RATER stands in for people (demo): it prefers answers that name the customer's "
              "request (the words of its intent) and end as a sentence")
    n = 0
    with open(choices, "a", encoding="utf-8") as f:
        for it in items:
            if it["id"] in done:
                continue
            c = it["candidates"]
            if script:
                s = [scripted(it["intent"], a) for a in c]
                best, worst = s.index(max(s)), s.index(min(s))
                if s[best] == s[worst]:
                    continue  # no preference: no pair
            else:
                print(f"\n--- message {it['id'] + 1}/{len(items)}: {it['prompt']}")
                for i, a in enumerate(c):
                    print(f"  [{i + 1}] {a}")
                r = input("best and worst (e.g. '2 4'), s to skip, q to stop: ").strip().lower()
                if r == "q":
                    break
                if r == "s":
                    continue
                try:
                    best, worst = (int(x) - 1 for x in r.split())
                    if best == worst or not (0 <= best < len(c) and 0 <= worst < len(c)):
                        raise ValueError
                except ValueError:
                    print("  (not two different answer numbers: skipped)")
                    continue
            f.write(json.dumps({"id": it["id"], "best": best, "worst": worst,
                                "rater": "script" if script else "person"}) + "\n")
            n += 1
    print(f"rate.py: {n} new choices in {choices}")


def pairs(cands, choices, out):
    items = {json.loads(l)["id"]: json.loads(l) for l in open(cands, encoding="utf-8")}
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for l in open(choices, encoding="utf-8"):
            ch = json.loads(l)
            it = items[ch["id"]]
            f.write(json.dumps({"prompt": it["prompt"], "chosen": it["candidates"][ch["best"]],
                                "rejected": it["candidates"][ch["worst"]]}, ensure_ascii=False) + "\n")
            n += 1
    print(f"rate.py: {n} preference pairs -> {out}")


def judge(answers):
    a = [json.loads(l) for l in open(answers, encoding="utf-8")]
    print(f"{sum(scripted(x['label'], x['completion']) for x in a) / len(a):.3f}")


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "candidates" and len(args) == 4:
        candidates(*args)
    elif cmd == "ask" and len(args) in (2, 3) and (len(args) == 2 or args[2] == "--script"):
        ask(args[0], args[1], len(args) == 3)
    elif cmd == "pairs" and len(args) == 3:
        pairs(*args)
    elif cmd == "judge" and len(args) == 1:
        judge(args[0])
    else:
        sys.exit(__doc__)
