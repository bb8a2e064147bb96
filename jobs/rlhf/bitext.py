#!/usr/bin/env python3
"""Bitext customer support (data/bitext-support, CDLA-Sharing-1.0) for the
RLHF recipes (jobs/rlhf-bitext.sh, jobs/rlhf-round.sh).

A record is a customer message ("instruction"), its intent (27) and an
agent's reply. The recipes read rows of 128 tokens, so an answer here is
the reply's first sentence that says something (30 bytes or more, so not
"Certainly!"; at most 140, cut at a space): where the agent restates what it
understood the customer wants ("I understand that you want to switch to a Pro
account."). The held-out records are the industry recipes' Bitext test side
(jobs/industry/splits.py: a message's side is fixed by its SHA-256; 438 of
4,514), the side the shipped base (pretrained on the train sides only) never
saw.

  bitext.py split OUT              the files below, in OUT
  bitext.py answers GEN TEST OUT   generate's answers to TEST's prompts as
                                   {"prompt": instruction, "completion": answer,
                                   "text": answer, "label": intent} (for
                                   `shardtune score` and a classify dataset)
  bitext.py table OUT NAME...      the before/after table of the evaluated models

split writes:
  sft-train.jsonl    {"prompt": instruction, "response": answer}   (training records)
  pairs-train.jsonl  {"prompt", "chosen", "rejected"}: the record's answer preferred
                     over the answer of a record of another intent, and over
                     its own first words (an unfinished answer; seeded)
  judge-train.jsonl  {"text": answer, "label": intent}: the judge, an intent
                     classifier of answers, learns from the training records
  judge-ref.jsonl    the same for the held-out records (the judge's own accuracy)
  test.jsonl         {"prompt": the rendered prompt generate continues,
                     "instruction", "intent"}: the held-out records
  prompts-train.jsonl  the same for the training records, shuffled (seeded):
                     its first lines are prompts of every intent
  ref-answers.jsonl  the held-out records' own answers, as `answers` writes a
                     model's (the reference line of the tables)
  intents.json       the 27 intent names (label order)
"""
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "industry"))
from splits import bitext_rows  # noqa: E402  (the industry recipes' split, one rule for all)

MAX_ANSWER = 140


def answer_of(text):
    """the first sentence of the reply's first paragraph that says something
    (30 bytes or more: not "Certainly!"), cut at a space to MAX_ANSWER bytes"""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip().split("\n")[0])
    s = next((x for x in sentences if len(x.encode()) >= 30), sentences[0])
    if len(s.encode()) > MAX_ANSWER:
        s = s.encode()[:MAX_ANSWER].decode(errors="ignore")
        s = s[: s.rfind(" ")] if " " in s else s
    return s


def rendered(instruction):
    """the default template's prompt (io/chat/template.h), up to the answer"""
    return "<|user|>\n" + instruction + "\n<|assistant|>\n"


def split(out):
    sides = bitext_rows()
    train, test = sides["train"], sides["test"]
    intents = sorted({r["intent"] for r in train + test})
    by_intent = {}
    for r in train:
        by_intent.setdefault(r["intent"], []).append(answer_of(r["response"]))
    rng = random.Random(15)
    os.makedirs(out, exist_ok=True)

    def write(name, items):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            for x in items:
                f.write(json.dumps(x, ensure_ascii=False) + "\n")

    write("sft-train.jsonl", ({"prompt": r["instruction"], "response": answer_of(r["response"])} for r in train))
    pairs = []
    for r in train:
        chosen = answer_of(r["response"])
        other = rng.choice([i for i in intents if i != r["intent"]])
        pairs.append({"prompt": r["instruction"], "chosen": chosen, "rejected": rng.choice(by_intent[other])})
        # and over itself cut short: an unfinished answer is worse than the whole one
        words = chosen.split()
        if len(words) >= 6:
            cut = " ".join(words[: rng.randint(2, len(words) // 2)])
            pairs.append({"prompt": r["instruction"], "chosen": chosen, "rejected": cut})
    write("pairs-train.jsonl", pairs)
    write("judge-train.jsonl", ({"text": answer_of(r["response"]), "label": r["intent"]} for r in train))
    write("judge-ref.jsonl", ({"text": answer_of(r["response"]), "label": r["intent"]} for r in test))
    def prompt(r):
        return {"prompt": rendered(r["instruction"]), "instruction": r["instruction"], "intent": r["intent"]}

    write("test.jsonl", (prompt(r) for r in test))
    shuffled = list(train)
    random.Random(16).shuffle(shuffled)
    write("prompts-train.jsonl", (prompt(r) for r in shuffled))
    write("ref-answers.jsonl", ({"prompt": r["instruction"], "completion": answer_of(r["response"]),
                                 "text": answer_of(r["response"]), "label": r["intent"]} for r in test))
    json.dump(intents, open(os.path.join(out, "intents.json"), "w"))
    print(f"bitext: {len(train)} training and {len(test)} held-out records, {len(intents)} intents -> {out}")


def answers(gen, test, out):
    """generate writes its lines in prompt order: line i answers test line i"""
    tests = [json.loads(l) for l in open(test, encoding="utf-8")]
    # a sampled answer can end inside a character (sentencepiece's byte tokens):
    # generate writes those bytes as they are, read them as U+FFFD
    gens = [json.loads(l) for l in open(gen, encoding="utf-8", errors="replace")]
    if len(gens) > len(tests) or any(g["prompt"] != t["prompt"] for g, t in zip(gens, tests)):
        sys.exit(f"{gen}: its prompts are not {test}'s, in order")
    with open(out, "w", encoding="utf-8") as f:
        for g, t in zip(gens, tests):
            a = g["completion"].strip()
            f.write(json.dumps({"prompt": t["instruction"], "completion": a, "text": a or ".", "label": t["intent"]},
                               ensure_ascii=False) + "\n")


def table(out, names):
    """per model: the reward model's mean score of its held-out answers, the
    judge's accuracy (the answer's intent is the customer's), answer length,
    and answers with a {{placeholder}} slot as Bitext's agents write them"""
    print(f"  {'model':<34} {'reward model':>12} {'judge: intent':>13} {'bytes':>6} {'slots':>6}")
    for name in names:
        scored = [json.loads(l) for l in open(os.path.join(out, name + "-scored.jsonl"), encoding="utf-8")]
        judge = json.load(open(os.path.join(out, name + "-judge.json")))
        n = len(scored)
        reward = sum(x["reward"] for x in scored) / n
        length = sum(len(x["completion"].encode()) for x in scored) / n
        slots = sum("{{" in x["completion"] for x in scored) / n
        print(f"  {name:<34} {reward:>12.3f} {100 * judge['accuracy']:>12.1f}% {length:>6.0f} {100 * slots:>5.0f}%")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "split" and len(sys.argv) == 3:
        split(sys.argv[2])
    elif cmd == "answers" and len(sys.argv) == 5:
        answers(*sys.argv[2:])
    elif cmd == "table" and len(sys.argv) >= 4:
        table(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
