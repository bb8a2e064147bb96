#!/usr/bin/python3
"""Google's sentencepiece (Debian's python3-sentencepiece) as the reference
for shardtune's llama2c: tokenizer: one JSON array of ids per text, bos first
(sentencepiece's and llama2.c's rule), as `shardtune tokenize` writes them.

usage: spm_tokenize.py MODEL TEXTS.jsonl OUT.ids [--eos]
  --eos: eos appended (prepare's text documents)
"""
import json
import sys

import sentencepiece as spm


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    eos = "--eos" in sys.argv[4:]
    with open(sys.argv[2], encoding="utf-8") as f, open(sys.argv[3], "w") as out:
        for line in f:
            if line.strip():
                ids = sp.encode(json.loads(line)["text"], add_bos=True, add_eos=eos)
                out.write(json.dumps(ids) + "\n")


if __name__ == "__main__":
    main()
