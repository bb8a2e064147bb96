// llama_greedy.mjs: real llama.cpp (node-llama-cpp's prebuilt CPU build,
// never built or downloaded here) as the reference for shardtune's GGUF
// export and greedy generation. For each prompt: llama.cpp's own tokens (its
// tokenizer, bos by the file's add_bos_token rule), then greedy decoding.
//
// usage: node llama_greedy.mjs MODEL.gguf PROMPTS.jsonl OUT.jsonl MAX_NEW
// writes {"prompt", "completion", "prompt_ids", "completion_ids"} per prompt,
// as `shardtune generate --out` does; stops at eos like --stop_at_eos.
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const [modelPath, promptsPath, outPath, maxNewArg] = process.argv.slice(2);
if (!maxNewArg) {
  console.error("usage: node llama_greedy.mjs MODEL.gguf PROMPTS.jsonl OUT.jsonl MAX_NEW");
  process.exit(2);
}
const maxNew = Number(maxNewArg);
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
// one thread: the machine's other core belongs to others (and llama.cpp's
// spinning worker threads crawl on a busy machine)
const context = await model.createContext({ contextSize: 512, sequences: 1, threads: 1 });
const sequence = context.getSequence();
const prompts = fs.readFileSync(promptsPath, "utf8").split("\n").filter((l) => l.trim() !== "")
  .map((l) => JSON.parse(l).prompt);
const out = [];
for (const prompt of prompts) {
  const promptIds = [...(model.tokens.shouldPrependBosToken ? [model.tokens.bos] : []),
                     ...model.tokenize(prompt, false)];
  const completionIds = [];
  await sequence.clearHistory();
  for await (const t of sequence.evaluate(promptIds, { temperature: 0 })) {
    if (t === model.tokens.eos) break;
    completionIds.push(t);
    if (completionIds.length >= maxNew) break;
  }
  out.push(JSON.stringify({ prompt, completion: model.detokenize(completionIds),
                            prompt_ids: promptIds, completion_ids: completionIds }));
}
fs.writeFileSync(outPath, out.join("\n") + "\n");
await context.dispose();
await model.dispose();
