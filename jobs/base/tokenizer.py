"""Train the base model's tokenizer and write it in llama2.c's format.

A sentencepiece BPE model (Debian python3-sentencepiece) trained on the base
corpus with llama2.c's settings (tinystories.py train_vocab: byte fallback,
split digits, identity normalisation), then exported as llama2.c's
tokenizer.py exports it: per id a float32 score and the piece's bytes, with
the word-boundary mark U+2581 as a space and bos/eos as "\\n<s>\\n" and
"\\n</s>\\n". `shardtune prepare --tokenizer llama2c:FILE` reads that file.

usage: python3 jobs/base/tokenizer.py CORPUS.txt VOCAB OUT_PREFIX
writes OUT_PREFIX.model (sentencepiece) and OUT_PREFIX.bin (llama2.c)."""
import os, struct, sys

import sentencepiece as spm

corpus, vocab, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spm.SentencePieceTrainer.train(
    input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=vocab,
    self_test_sample_size=0, input_format="text", character_coverage=1.0,
    num_threads=1, split_digits=True, allow_whitespace_only_pieces=True,
    byte_fallback=True, unk_surface=r" \342\201\207 ", normalization_rule_name="identity",
    max_sentence_length=1 << 16, input_sentence_size=0, minloglevel=2)

sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
pieces = []
for i in range(sp.get_piece_size()):
    piece = sp.id_to_piece(i)
    if i == sp.bos_id():
        piece = "\n<s>\n"
    elif i == sp.eos_id():
        piece = "\n</s>\n"
    pieces.append((piece.replace("\u2581", " ").encode("utf-8"), sp.get_score(i)))
with open(prefix + ".bin", "wb") as f:
    f.write(struct.pack("<i", max(len(b) for b, _ in pieces)))
    for b, score in pieces:
        f.write(struct.pack("<fi", score, len(b)))
        f.write(b)
os.remove(prefix + ".vocab")
print(f"{prefix}.model, {prefix}.bin: {len(pieces)} pieces")
