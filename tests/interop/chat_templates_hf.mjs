// Renders a chat template with @huggingface/jinja (the Jinja of transformers.js)
// once per JSONL line of variables, printing {"text": ...} or {"error": ...} per
// line, as `shardtune chat-template` does. Used by check_chat_templates.
//   node chat_templates_hf.mjs TEMPLATE.jinja VARS.jsonl [BOS|-] [EOS|-]
// strftime_now is the package's own; with SOURCE_DATE_EPOCH set, its clock is
// that instant (run with TZ=UTC), as shardtune's.
import fs from "node:fs";
import { Template } from "@huggingface/jinja";

const [file, input, bos, eos] = process.argv.slice(2);
const epoch = process.env.SOURCE_DATE_EPOCH;
if (epoch !== undefined) {
  const RealDate = Date;
  const fixed = Number(epoch) * 1000;
  globalThis.Date = class extends RealDate {
    constructor(...args) {
      if (args.length) super(...args);
      else super(fixed);
    }
    static now() {
      return fixed;
    }
  };
}

const template = new Template(fs.readFileSync(file, "utf8"));
const out = [];
for (const line of fs.readFileSync(input, "utf8").split("\n")) {
  if (!line.trim()) continue;
  // transformers' apply_chat_template: special tokens, tools and documents (null), the caller's variables
  const vars = { tools: null, documents: null, add_generation_prompt: false };
  if (bos && bos !== "-") vars.bos_token = bos;
  if (eos && eos !== "-") vars.eos_token = eos;
  Object.assign(vars, JSON.parse(line));
  try {
    out.push(JSON.stringify({ text: template.render(vars) }));
  } catch (e) {
    out.push(JSON.stringify({ error: String(e && e.message ? e.message : e) }));
  }
}
process.stdout.write(out.join("\n") + "\n");
