"""Scores for the industry recipes, from shardtune's output files.

  gen REFS.jsonl GENERATED.jsonl
      generated answers ({"prompt","completion"} lines from `shardtune generate
      --prompts REFS --out GENERATED`, in the same order) against the
      "reference" of each line of REFS: ROUGE-L F1 and, where references hold
      {{Placeholder}} slots, the slot retention rate. Prints JSON.
  cuad SCORED.jsonl
      LegalBench's metric from `shardtune score` log-probabilities of the
      " Yes" and " No" candidates of each test row: the answer with the higher
      log-probability is the prediction; balanced accuracy per task (the mean
      of the recall of Yes and the recall of No) and its mean over tasks.
      Also with contextual calibration (Zhao et al. 2021, "Calibrate before
      use"): each answer's log-probability less its log-probability for the
      task's content-free clause "N/A" (the rows with id "na").
      Prints JSON {"mean", "rows", "tasks", "mean_calibrated", "tasks_calibrated"}.
  bpc EVAL.json TEXT.jsonl FIELD
      bits per character of the held-out answers: the loss of `shardtune eval`
      (nats per answer token, its end-of-text token included) times its token
      count, over the characters of FIELD in TEXT.jsonl. Comparable across
      tokenizers, unlike perplexity per token.
  cuad_tasks OUT.tsv NAME=CUAD.json ...
      the per-task balanced accuracies of several `cuad` results side by side
      (tab-separated, for `table`), with their mean as the last row.
  table TSV
      a Markdown table from tab-separated rows (the first is the header).

ROUGE-L is Lin (2004)'s LCS F-measure (beta 1, as rouge-score's fmeasure)
over lower-cased word tokens [a-z0-9]+ (no stemming), written here: Debian
packages no ROUGE library for Python."""
import json, math, re, sys

WORD = re.compile(r"[a-z0-9]+")
SLOT = re.compile(r"\{\{[^{}]+\}\}")


def lcs_len(a, b):
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference, candidate):
    r, c = WORD.findall(reference.lower()), WORD.findall(candidate.lower())
    if not r or not c:
        return 0.0
    lcs = lcs_len(r, c)
    if lcs == 0:
        return 0.0
    p, q = lcs / len(c), lcs / len(r)
    return 2 * p * q / (p + q)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gen(refs_path, gen_path):
    refs, outs = read_jsonl(refs_path), read_jsonl(gen_path)
    if len(refs) != len(outs):
        raise SystemExit(f"{gen_path}: {len(outs)} answers for {len(refs)} prompts in {refs_path}")
    rouge, kept, slots = 0.0, 0, 0
    for ref, out in zip(refs, outs):
        rouge += rouge_l(ref["reference"], out["completion"])
        want = set(SLOT.findall(ref["reference"]))
        slots += len(want)
        kept += sum(1 for s in want if s in out["completion"])
    result = {"n": len(refs), "rouge_l": rouge / len(refs)}
    if slots:
        result["placeholder_retention"] = kept / slots
        result["placeholder_slots"] = slots
    print(json.dumps(result))


def balanced_accuracy(preds):
    """preds: [(label, predicted)] -> the mean recall over the labels present."""
    recall = {}
    for label, pred in preds:
        ok, n = recall.get(label, (0, 0))
        recall[label] = (ok + (pred == label), n + 1)
    return sum(ok / n for ok, n in recall.values()) / len(recall)


def cuad(scored_path):
    rows, na = {}, {}
    for r in read_jsonl(scored_path):
        if r["id"] == "na":
            na.setdefault(r["task"], {})[r["answer"]] = r["logprob"]
        else:
            rows.setdefault((r["task"], r["id"]), {"label": r["label"]})[r["answer"]] = r["logprob"]
    raw, cal = {}, {}
    for (task, _), r in rows.items():
        if "Yes" not in r or "No" not in r:
            raise SystemExit(f"{scored_path}: a test row of {task} lacks its Yes or No candidate")
        raw.setdefault(task, []).append((r["label"], "Yes" if r["Yes"] > r["No"] else "No"))
        if task in na:
            shift = na[task]["Yes"] - na[task]["No"]
            cal.setdefault(task, []).append((r["label"], "Yes" if r["Yes"] - r["No"] > shift else "No"))
    result = {"rows": len(rows)}
    for key, preds in (("", raw), ("_calibrated", cal)):
        if preds:
            bal = {t: balanced_accuracy(p) for t, p in sorted(preds.items())}
            result["mean" + key] = sum(bal.values()) / len(bal)
            result["tasks" + key] = bal
    print(json.dumps(result))


def bpc(eval_path, text_path, field):
    with open(eval_path, encoding="utf-8") as f:
        ev = json.load(f)
    chars = sum(len(r[field]) for r in read_jsonl(text_path))
    print(f"{ev['loss'] * ev['examples_or_tokens'] / math.log(2) / chars:.4f}")


def cuad_tasks(out_path, *named):
    names, results = [], []
    for item in named:
        name, path = item.split("=", 1)
        with open(path, encoding="utf-8") as f:
            names.append(name)
            results.append(json.load(f))
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\t".join(["task"] + names) + "\n")
        for task in results[0]["tasks"]:
            f.write("\t".join([task.removeprefix("cuad_")] + [f"{r['tasks'][task]:.3f}" for r in results]) + "\n")
        f.write("\t".join(["mean"] + [f"{r['mean']:.3f}" for r in results]) + "\n")


def table(tsv_path):
    with open(tsv_path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        r = r + [""] * (len(widths) - len(r))
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main():
    cmds = {"gen": gen, "cuad": cuad, "cuad_tasks": cuad_tasks, "bpc": bpc, "table": table}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        raise SystemExit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
