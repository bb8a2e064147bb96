// gen_llama.mjs: llama.cpp's batched decoding (node-llama-cpp's prebuilt CPU
// build, never built or downloaded here) measured as `shardtune generate`
// reports its own: the prompts through the model up to the first new token of
// every sequence, then the rest of the new tokens, all sequences decoding
// together in one context (one llama_decode batch per position).
//
// usage: node gen_llama.mjs MODEL.gguf PROMPTS.jsonl BATCH NEW_TOKENS THREADS
// The first BATCH prompts of PROMPTS.jsonl ({"prompt": ...} lines), greedy,
// NEW_TOKENS per sequence whatever they are (end-of-text does not stop them,
// as with generate --stop_at_eos false). Prints one RESULT line.
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const [modelPath, promptsPath, batchArg, newArg, threadsArg] = process.argv.slice(2);
if (!threadsArg) {
  console.error("usage: node gen_llama.mjs MODEL.gguf PROMPTS.jsonl BATCH NEW_TOKENS THREADS");
  process.exit(2);
}
const batch = Number(batchArg), newTokens = Number(newArg), threads = Number(threadsArg);
const prompts = fs.readFileSync(promptsPath, "utf8").split("\n").filter((l) => l.trim() !== "")
  .map((l) => JSON.parse(l).prompt).slice(0, batch);
if (prompts.length < batch) {
  console.error(`gen_llama: ${promptsPath} has ${prompts.length} prompts, not ${batch}`);
  process.exit(2);
}
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error, maxThreads: threads });
const model = await llama.loadModel({ modelPath });
const ids = prompts.map((p) => [...(model.tokens.shouldPrependBosToken ? [model.tokens.bos] : []),
                                ...model.tokenize(p, false)]);
const longest = Math.max(...ids.map((t) => t.length));
// contextSize is per sequence; a batch holds every prompt at once
const context = await model.createContext({ contextSize: longest + newTokens + 16, sequences: batch, threads,
                                            batchSize: Math.max(512, ids.reduce((a, t) => a + t.length, 0)) });
const t0 = performance.now();
let firstDone = 0;
const firsts = [];
const runs = ids.map(async (promptIds) => {
  const sequence = context.getSequence();
  let n = 0;
  for await (const t of sequence.evaluate(promptIds, { temperature: 0 })) {
    void t;
    if (++n === 1) firsts.push(performance.now());
    if (n >= newTokens) break;
  }
});
await Promise.all(runs);
const t1 = performance.now();
firstDone = Math.max(...firsts);
const promptTokens = ids.reduce((a, t) => a + t.length, 0);
const promptS = (firstDone - t0) / 1e3, decodeS = (t1 - firstDone) / 1e3, decoded = batch * (newTokens - 1);
console.log(`RESULT gen tool=llama.cpp batch=${batch} threads=${threads} prompt_tokens=${promptTokens} ` +
            `prompt_s=${promptS.toFixed(3)} prompt_tok_s=${(promptTokens / promptS).toFixed(1)} ` +
            `new_tokens=${decoded} decode_s=${decodeS.toFixed(3)} decode_tok_s=${(decoded / decodeS).toFixed(1)}`);
await context.dispose();
await model.dispose();
