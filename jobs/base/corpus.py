"""Build the base model's pretraining corpus (JSONL of {"text": ...}):
banking77 training queries (customer-service language) and MedQuAD
questions with the first 400 characters of their answers (health language).
Deterministic; run by jobs/base/build.sh. Python is used only here, to make
the committed base model reproducible; shardtune itself does not need it."""
import csv, gzip, json, sys

bank, medquad, out = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
with open(out, "w", encoding="utf-8") as f:
    with open(bank, newline="", encoding="utf-8") as b:
        for row in csv.DictReader(b):
            f.write(json.dumps({"text": row["text"].strip()}) + "\n"); n += 1
    with gzip.open(medquad, "rt", encoding="utf-8") as m:  # data/medquad: answered pairs only
        for line in m:
            qa = json.loads(line)
            f.write(json.dumps({"text": qa["question"] + "\n" + " ".join(qa["answer"].split())[:400]}) + "\n")
            n += 1
print(f"{out}: {n} documents")
