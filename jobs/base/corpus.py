"""Build the base model's pretraining corpus (JSONL of {"text": ...}):
banking77 training queries (customer-service language) and MedQuAD
questions with the first 400 characters of their answers (health language).
Deterministic; run by jobs/base/build.sh. Python is used only here, to make
the committed base model reproducible; shardtune itself does not need it."""
import csv, json, sys, tarfile, xml.etree.ElementTree as ET

bank, medquad, out = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
with open(out, "w", encoding="utf-8") as f:
    with open(bank, newline="", encoding="utf-8") as b:
        for row in csv.DictReader(b):
            f.write(json.dumps({"text": row["text"].strip()}) + "\n"); n += 1
    docs = {}  # read in archive order (a gzip stream does not seek), write sorted by name
    with tarfile.open(medquad, "r|gz") as t:
        for m in t:
            if m.name.endswith(".xml"):
                docs[m.name] = t.extractfile(m).read()
    for name in sorted(docs):
        root = ET.fromstring(docs[name])
        for qa in root.iter("QAPair"):
            q, a = qa.findtext("Question") or "", (qa.findtext("Answer") or "").strip()
            if not a:
                continue  # some MedlinePlus answers were removed by the publisher
            f.write(json.dumps({"text": q.strip() + "\n" + " ".join(a.split())[:400]}) + "\n"); n += 1
print(f"{out}: {n} documents")
