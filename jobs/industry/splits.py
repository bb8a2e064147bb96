"""The held-out splits of the industry recipes, written as JSONL for
`shardtune prepare`, `generate --prompts` and `score`.

A record's side is fixed by its group key, without a seed: the first 8 hex
digits of the key's SHA-256 as an integer, modulo 10; 0 is test, 1-9 train
(about 10% test). Any language recomputes it (split_of below). Validation
during training is carved from train by `prepare --val-fraction`.

  medquad  key = the document's focus, lower case: every answer about one
           disease, gene or drug is on one side. Test pairs whose answer text
           (whitespace-normalised) also occurs in train are dropped (NIH pages
           repeat some answers under other foci).
  bitext   key = the customer message (instruction); the 4,514 messages are
           distinct. 4,076 train, 438 test.
  cuad     LegalBench's own split: train.tsv (6 rows per task, 228 in all) and
           test.tsv, minus every test row whose clause occurs in any task's
           train.tsv (LegalBench's test files repeat their train rows).
  banking  banking77's own train.csv / test.csv.

The base model (jobs/base/) is pretrained on the train sides only.

usage: python3 jobs/industry/splits.py {medquad,bitext,cuad,corpus} OUT_DIR [options]
Python only prepares text here; shardtune itself does not need it."""
import csv, gzip, hashlib, json, os, sys

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data")
BITEXT = os.path.join(DATA, "bitext-support", "Bitext_Sample_Customer_Support_Training_Dataset.csv")
MEDQUAD = os.path.join(DATA, "medquad", "medquad-qa.jsonl.gz")
CUAD = os.path.join(DATA, "legalbench-cuad")
ANSWER_CHARS = 400   # MedQuAD answers are cut here (at a word boundary) for SFT and its references
TEST_ANSWER_CHARS = 550   # Bitext test answers are cut here for the bits-per-character measure


def split_of(key):
    """'test' or 'train' for a group key."""
    return "test" if int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10 == 0 else "train"


def squash(text):
    return " ".join(text.split())


def cut_words(text, limit):
    """text cut to at most limit characters, at a word boundary."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0]


def spread(records, n):
    """n records spread evenly over the list (all of them when n is 0 or larger)."""
    if n <= 0 or n >= len(records):
        return list(records)
    return [records[i * len(records) // n] for i in range(n)]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"  {path}: {len(records)} records")


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)


# ---- the data sets, by side -------------------------------------------------

def medquad_rows():
    out = {"train": [], "test": []}
    with gzip.open(MEDQUAD, "rt", encoding="utf-8") as f:
        for line in f:
            qa = json.loads(line)
            qa["answer"], qa["question"] = squash(qa["answer"]), squash(qa["question"])
            out[split_of(qa["focus"].strip().lower())].append(qa)
    seen = {qa["answer"] for qa in out["train"]}
    out["test"] = [qa for qa in out["test"] if qa["answer"] not in seen]
    return out


def bitext_rows():
    out = {"train": [], "test": []}
    with open(BITEXT, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row["response"] = row["response"].replace("\r\n", "\n").strip()
            out[split_of(row["instruction"])].append(row)
    return out


def cuad_tasks():
    """{task: {"question", "train": [(text, label)], "test": [(text, label)]}}.
    The TSVs are read with the csv module (tab delimiter, pandas-style double
    quotes around fields holding quotes, tabs or newlines)."""
    csv.field_size_limit(1 << 24)
    tasks = {}
    for task in sorted(d for d in os.listdir(CUAD) if d.startswith("cuad_")):
        t = {}
        for side in ("train", "test"):
            with open(os.path.join(CUAD, task, side + ".tsv"), newline="", encoding="utf-8") as f:
                t[side] = [(r["text"], r["label"]) for r in csv.DictReader(f, delimiter="\t")]
            bad = [label for _, label in t[side] if label not in ("Yes", "No")]
            if bad:
                raise SystemExit(f"{task}/{side}.tsv: label {bad[0]!r}, expected Yes or No")
        with open(os.path.join(CUAD, task, "base_prompt.txt"), encoding="utf-8") as f:
            t["question"] = f.readline().strip()   # the prompt's first line is the task's question
        tasks[task] = t
    seen = {text for t in tasks.values() for text, _ in t["train"]}
    for t in tasks.values():
        t["test"] = [(text, label) for text, label in t["test"] if text not in seen]
    return tasks


def banking_rows():
    with open(os.path.join(DATA, "banking77", "train.csv"), newline="", encoding="utf-8") as f:
        return [row["text"].strip() for row in csv.DictReader(f)]


# ---- what each recipe reads -------------------------------------------------

def medquad(out, n_gen):
    """qa-{train,test}.jsonl (prompt/response, answers cut to ANSWER_CHARS),
    qtype-{train,test}.jsonl (text/label), qtypes.json, domain.jsonl (train
    questions and whole answers, for continued pretraining), qa-gen.jsonl
    (n_gen test questions spread over the split, with their references)."""
    rows = medquad_rows()
    qtypes = sorted({qa["qtype"] for side in rows.values() for qa in side})
    write_json(os.path.join(out, "qtypes.json"), qtypes)
    for side, recs in rows.items():
        write_jsonl(os.path.join(out, f"qa-{side}.jsonl"),
                    [{"prompt": qa["question"], "response": cut_words(qa["answer"], ANSWER_CHARS)} for qa in recs])
        write_jsonl(os.path.join(out, f"qtype-{side}.jsonl"), [{"text": qa["question"], "label": qa["qtype"]} for qa in recs])
    write_jsonl(os.path.join(out, "domain.jsonl"), [{"text": qa["question"] + "\n" + qa["answer"]} for qa in rows["train"]])
    write_jsonl(os.path.join(out, "qa-gen.jsonl"),
                [{"prompt": qa["question"], "reference": cut_words(qa["answer"], ANSWER_CHARS)}
                 for qa in spread(rows["test"], n_gen)])


def bitext(out, n_gen):
    """sft-{train,test}.jsonl (prompt = the customer's message, response = the
    answer; test answers cut to TEST_ANSWER_CHARS), intent-{train,test}.jsonl (text/label), intents.json,
    domain.jsonl (train messages and answers), sft-gen.jsonl (n_gen test
    messages spread over the split, with their reference answers)."""
    rows = bitext_rows()
    write_json(os.path.join(out, "intents.json"), sorted({r["intent"] for side in rows.values() for r in side}))
    for side, recs in rows.items():
        # test answers cut to TEST_ANSWER_CHARS, so that every tokenizer's sequence holds them whole for the
        # bits-per-character measure; training and the generation references keep whole answers
        cut = (lambda t: cut_words(t, TEST_ANSWER_CHARS)) if side == "test" else (lambda t: t)
        write_jsonl(os.path.join(out, f"sft-{side}.jsonl"),
                    [{"prompt": r["instruction"], "response": cut(r["response"])} for r in recs])
        write_jsonl(os.path.join(out, f"intent-{side}.jsonl"), [{"text": r["instruction"], "label": r["intent"]} for r in recs])
    write_jsonl(os.path.join(out, "domain.jsonl"), [{"text": r["instruction"] + "\n" + r["response"]} for r in rows["train"]])
    write_jsonl(os.path.join(out, "sft-gen.jsonl"),
                [{"prompt": r["instruction"], "reference": r["response"], "intent": r["intent"]}
                 for r in spread(rows["test"], n_gen)])


def cuad_prompt(text, question):
    """The clause first, so that cutting a long prompt from the left keeps the question."""
    return f"Clause: {text}\nQuestion: {question}\nAnswer:"


def cuad_sample(rows, per_task):
    """Up to per_task rows, half of each label where the task has enough, in
    the order of the clause's SHA-256 (all rows when per_task is 0)."""
    if per_task <= 0:
        return rows
    ordered = sorted(rows, key=lambda r: hashlib.sha256(r[0].encode("utf-8")).hexdigest())
    yes = [r for r in ordered if r[1] == "Yes"]
    no = [r for r in ordered if r[1] == "No"]
    k_yes = min(len(yes), max(per_task // 2, per_task - len(no)))
    return yes[:k_yes] + no[:per_task - k_yes]


def cuad(out, per_task):
    """train.jsonl (all 228 rows: prompt/response " Yes"/" No", with "task"),
    domain.jsonl (the train clauses), candidates.jsonl (each sampled test row
    twice, completion " Yes" and " No", with task, row id and label; and per
    task the content-free clause "N/A", id "na", for contextual calibration),
    and per task tasks/TASK/{train,candidates}.jsonl."""
    tasks = cuad_tasks()
    train, cands = [], []
    for task, t in tasks.items():
        d = os.path.join(out, "tasks", task)
        os.makedirs(d, exist_ok=True)
        tr = [{"task": task, "prompt": cuad_prompt(text, t["question"]), "response": " " + label}
              for text, label in t["train"]]
        cs = []
        rows = list(enumerate(cuad_sample(t["test"], per_task))) + [("na", ("N/A", ""))]
        for i, (text, label) in rows:   # "na": the content-free clause of contextual calibration
            for answer in ("Yes", "No"):
                cs.append({"task": task, "id": i, "label": label, "answer": answer,
                           "prompt": cuad_prompt(text, t["question"]), "completion": " " + answer})
        with open(os.path.join(d, "train.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in tr)
        with open(os.path.join(d, "candidates.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in cs)
        train += tr
        cands += cs
    write_jsonl(os.path.join(out, "train.jsonl"), train)
    write_jsonl(os.path.join(out, "candidates.jsonl"), cands)
    write_jsonl(os.path.join(out, "domain.jsonl"),
                [{"text": text} for text in sorted({text for t in tasks.values() for text, _ in t["train"]})])
    print(f"  {len(tasks)} tasks, {len(cands) // 2 - len(tasks)} test rows scored "
          f"({'all' if per_task <= 0 else f'up to {per_task} per task'} of {sum(len(t['test']) for t in tasks.values())})")


def corpus(out):
    """The base model's pretraining text: every recipe's training side, never a
    test record. corpus.jsonl for prepare; corpus.txt (one document a line)
    for the tokenizer trainer."""
    docs = banking_rows()
    docs += [qa["question"] + "\n" + qa["answer"] for qa in medquad_rows()["train"]]
    docs += [r["instruction"] + "\n" + r["response"] for r in bitext_rows()["train"]]
    docs += sorted({text for t in cuad_tasks().values() for text, _ in t["train"]})
    write_jsonl(os.path.join(out, "corpus.jsonl"), [{"text": d} for d in docs])
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
        f.writelines(d.replace("\n", " ") + "\n" for d in docs)
    print(f"  {sum(len(d) for d in docs)} characters")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    what, out, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0
    os.makedirs(out, exist_ok=True)
    makers = {"medquad": lambda: medquad(out, arg), "bitext": lambda: bitext(out, arg),
              "cuad": lambda: cuad(out, arg), "corpus": lambda: corpus(out)}
    if what not in makers:
        raise SystemExit(f"splits.py: unknown data set {what!r} (medquad, bitext, cuad or corpus)")
    makers[what]()


if __name__ == "__main__":
    main()
