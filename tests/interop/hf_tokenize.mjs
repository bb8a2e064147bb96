// hf_tokenize.mjs: Hugging Face tokenizers.js (@huggingface/tokenizers) as the
// reference for shardtune's tokenizers. Reads texts (JSONL {"text": ...}) and
// writes one JSON array of token ids per text, as `shardtune tokenize` does.
//
// usage: node hf_tokenize.mjs DIR TEXTS.jsonl OUT.ids [--plain] [--eos]
//   DIR holds tokenizer.json and tokenizer_config.json.
//   default: encode(text) with the tokenizer's own special tokens (add_special_tokens)
//   --plain: without them;  --eos: then the config's eos_token appended (prepare's text
//   documents), and null for a text that holds a special token's text, which
//   prepare never turns into that token (data cannot forge control tokens)
import fs from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, textsPath, outPath, ...flags] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node hf_tokenize.mjs DIR TEXTS.jsonl OUT.ids [--plain] [--eos]");
  process.exit(2);
}
const json = JSON.parse(fs.readFileSync(`${dir}/tokenizer.json`, "utf8"));
const config = JSON.parse(fs.readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
const tok = new Tokenizer(json, config);
const plain = flags.includes("--plain");
let eos = [];
if (flags.includes("--eos")) {
  const name = typeof config.eos_token === "string" ? config.eos_token : config.eos_token?.content;
  const id = tok.token_to_id(name);
  if (id === undefined) throw new Error(`${dir}: eos_token ${name} has no id`);
  eos = [id];
}
const specials = json.added_tokens.filter((a) => a.special).map((a) => a.content);
const lines = fs.readFileSync(textsPath, "utf8").split("\n").filter((l) => l.trim() !== "");
const out = lines.map((l) => {
  const text = JSON.parse(l).text;
  if (eos.length && specials.some((s) => text.includes(s))) return "null";
  const ids = tok.encode(text, { add_special_tokens: !plain }).ids;
  return JSON.stringify([...ids, ...eos]).replaceAll(",", ", ");
});
fs.writeFileSync(outPath, out.join("\n") + "\n");
