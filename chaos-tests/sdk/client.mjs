// One call of an official SDK (openai, @anthropic-ai/sdk, @google/genai) against a base URL,
// for chaos-tests/test_sdk_clients.py. Takes one JSON argument:
//   {"sdk": "openai"|"anthropic"|"gemini", "base_url": "https://127.0.0.1:PORT",
//    "key": "...", "model": "...", "stream": true|false, "scenario": "text"|"tool"|"models",
//    "prompt": "...", "max_tokens": N, "headers": {..extra request headers (OpenAI, Anthropic)}}
// base_url is the server's root: the script adds what each SDK's convention wants (OpenAI
// `/v1`; Anthropic and Gemini none). Prints one JSON line on stdout:
//   {"ok": true, "text", "tool_calls": [{"name", "arguments"}], "usage", "finish", "chunks",
//    "rounds": [...]}            (for "tool": rounds[0] is the tool call, rounds[1] the answer
//                                 to the tool's result; text/usage are those of the last round)
//   {"ok": false, "error": {"class", "status", "type", "code", "message"}}
// "usage" is what the SDK reports, in the SDK's own field names. SDK retries are off: the
// test sees exactly what the server answered. Exit code 0 in both cases; 2 on bad arguments.
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import OpenAI from 'openai';

const TOOL = {
  name: 'get_weather',
  description: 'Current weather of a city',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
  },
};
const TOOL_RESULT = '{"temperature_c":21}';

// "models": the model list as the SDK pages through it (GET /v1/models; the Anthropic SDK
// sends anthropic-version, so the node answers in Anthropic's shape).
async function listModels(client) {
  const models = [];
  for await (const m of client.models.list()) {
    models.push({
      id: m.id, type: m.type ?? m.object ?? null, display_name: m.display_name ?? null,
      created_at: m.created_at ?? null, owned_by: m.owned_by ?? null,
    });
  }
  return { text: '', tool_calls: [], usage: null, finish: null, chunks: 0, models };
}

// ---------------------------------------------------------------- OpenAI (chat completions)

async function openaiRound(client, args, messages, withTools) {
  const req = { model: args.model, messages, max_tokens: args.max_tokens };
  if (withTools) req.tools = [{ type: 'function', function: TOOL }];
  if (!args.stream) {
    const r = await client.chat.completions.create(req);
    const choice = r.choices[0];
    return {
      text: choice.message.content ?? '',
      tool_calls: (choice.message.tool_calls ?? []).map((c) => ({
        id: c.id, name: c.function.name, arguments: c.function.arguments,
      })),
      usage: r.usage ?? null,
      finish: choice.finish_reason,
      chunks: 0,
      id: r.id,
    };
  }
  req.stream = true;
  req.stream_options = { include_usage: true };
  const stream = await client.chat.completions.create(req);
  let text = '';
  let usage = null;
  let finish = null;
  let chunks = 0;
  let id = null;
  const calls = [];
  for await (const chunk of stream) {
    chunks++;
    id = id ?? chunk.id;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices ?? []) {
      if (choice.delta?.content) text += choice.delta.content;
      for (const tc of choice.delta?.tool_calls ?? []) {
        const slot = (calls[tc.index] ??= { id: '', name: '', arguments: '' });
        if (tc.id) slot.id = tc.id;
        if (tc.function?.name) slot.name += tc.function.name;
        if (tc.function?.arguments) slot.arguments += tc.function.arguments;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return { text, tool_calls: calls.filter(Boolean), usage, finish, chunks, id };
}

async function runOpenAI(args) {
  const client = new OpenAI({
    apiKey: args.key, baseURL: args.base_url + '/v1', maxRetries: 0, timeout: 30000,
    defaultHeaders: args.headers,
  });
  if (args.scenario === 'models') return [await listModels(client)];
  const messages = [{ role: 'user', content: args.prompt }];
  if (args.scenario !== 'tool') return [await openaiRound(client, args, messages, false)];
  const first = await openaiRound(client, args, messages, true);
  const call = first.tool_calls[0];
  if (!call) return [first];
  messages.push({
    role: 'assistant', content: null,
    tool_calls: [{ id: call.id, type: 'function', function: { name: call.name, arguments: call.arguments } }],
  });
  messages.push({ role: 'tool', tool_call_id: call.id, content: TOOL_RESULT });
  return [first, await openaiRound(client, args, messages, true)];
}

// ------------------------------------------------------------------- Anthropic (messages)

async function anthropicRound(client, args, messages, withTools) {
  const req = { model: args.model, max_tokens: args.max_tokens, messages };
  if (withTools) {
    req.tools = [{ name: TOOL.name, description: TOOL.description, input_schema: TOOL.parameters }];
  }
  let msg;
  let chunks = 0;
  if (args.stream) {
    const stream = client.messages.stream(req);
    stream.on('streamEvent', () => { chunks++; });
    msg = await stream.finalMessage();
  } else {
    msg = await client.messages.create(req);
  }
  return {
    text: msg.content.filter((b) => b.type === 'text').map((b) => b.text).join(''),
    tool_calls: msg.content.filter((b) => b.type === 'tool_use').map((b) => ({
      id: b.id, name: b.name, arguments: JSON.stringify(b.input),
    })),
    usage: msg.usage ?? null,
    finish: msg.stop_reason,
    chunks,
    id: msg.id,
    content: msg.content,
  };
}

async function runAnthropic(args) {
  const client = new Anthropic({
    apiKey: args.key, baseURL: args.base_url, maxRetries: 0, timeout: 30000,
    defaultHeaders: args.headers,
  });
  if (args.scenario === 'models') return [await listModels(client)];
  const messages = [{ role: 'user', content: args.prompt }];
  if (args.scenario !== 'tool') return [await anthropicRound(client, args, messages, false)];
  const first = await anthropicRound(client, args, messages, true);
  const call = first.tool_calls[0];
  if (!call) return [first];
  messages.push({ role: 'assistant', content: first.content });
  messages.push({
    role: 'user',
    content: [{ type: 'tool_result', tool_use_id: call.id, content: TOOL_RESULT }],
  });
  return [first, await anthropicRound(client, args, messages, true)];
}

// ------------------------------------------------------------ Gemini (generateContent)

async function geminiRound(client, args, contents, withTools) {
  const config = { maxOutputTokens: args.max_tokens };
  if (withTools) config.tools = [{ functionDeclarations: [TOOL] }];
  const req = { model: args.model, contents, config };
  let text = '';
  let usage = null;
  let finish = null;
  let chunks = 0;
  const calls = [];
  let lastContent = null;
  const take = (r) => {
    chunks++;
    const cand = r.candidates?.[0];
    for (const part of cand?.content?.parts ?? []) {
      if (typeof part.text === 'string' && !part.thought) text += part.text;
      if (part.functionCall) calls.push({ name: part.functionCall.name, arguments: JSON.stringify(part.functionCall.args ?? {}) });
    }
    if (cand?.content) lastContent = cand.content;
    if (cand?.finishReason) finish = cand.finishReason;
    if (r.usageMetadata) usage = r.usageMetadata;
  };
  if (args.stream) {
    for await (const r of await client.models.generateContentStream(req)) take(r);
  } else {
    take(await client.models.generateContent(req));
    chunks = 0;
  }
  return { text, tool_calls: calls, usage, finish, chunks, content: lastContent };
}

async function runGemini(args) {
  const client = new GoogleGenAI({
    apiKey: args.key, vertexai: false,
    httpOptions: { baseUrl: args.base_url, timeout: 30000 },
  });
  const contents = [{ role: 'user', parts: [{ text: args.prompt }] }];
  if (args.scenario !== 'tool') return [await geminiRound(client, args, contents, false)];
  const first = await geminiRound(client, args, contents, true);
  const call = first.tool_calls[0];
  if (!call) return [first];
  contents.push({ role: 'model', parts: [{ functionCall: { name: call.name, args: JSON.parse(call.arguments) } }] });
  contents.push({
    role: 'user',
    parts: [{ functionResponse: { name: call.name, response: JSON.parse(TOOL_RESULT) } }],
  });
  return [first, await geminiRound(client, args, contents, true)];
}

// ------------------------------------------------------------------------------ errors

// What the SDK surfaces: its error class, the HTTP status, and the error body's type/code.
function describeError(sdk, e) {
  const out = {
    class: e?.constructor?.name ?? typeof e,
    status: typeof e?.status === 'number' ? e.status : null,
    type: null,
    code: null,
    message: String(e?.message ?? e).slice(0, 500),
  };
  if (sdk === 'openai') {
    out.type = e?.type ?? e?.error?.type ?? null;
    out.code = e?.code ?? e?.error?.code ?? null;
  } else if (sdk === 'anthropic') {
    out.type = e?.error?.error?.type ?? e?.error?.type ?? null;
  } else if (sdk === 'gemini') {
    // ApiError's message is the JSON error body ("got status: S. {...}" inside a stream)
    const m = /(\{.*\})/s.exec(out.message);
    if (m) {
      try {
        const body = JSON.parse(m[1]);
        out.type = body?.error?.status ?? null;
        out.code = body?.error?.code ?? null;
      } catch { /* not JSON: leave type/code null */ }
    }
  }
  if (e?.cause) out.cause = String(e.cause?.code ?? e.cause?.message ?? e.cause).slice(0, 200);
  return out;
}

// -------------------------------------------------------------------------------- main

async function main() {
  let args;
  try {
    args = JSON.parse(process.argv[2] ?? '');
  } catch {
    process.stderr.write('usage: node client.mjs \'{"sdk":..,"base_url":..,"key":..,"model":..}\'\n');
    process.exit(2);
  }
  args.prompt ??= 'hello there';
  args.max_tokens ??= 256;
  args.stream = !!args.stream;
  const run = { openai: runOpenAI, anthropic: runAnthropic, gemini: runGemini }[args.sdk];
  if (!run) {
    process.stderr.write('unknown sdk ' + args.sdk + '\n');
    process.exit(2);
  }
  let result;
  try {
    const rounds = await run(args);
    const last = rounds[rounds.length - 1];
    for (const r of rounds) delete r.content;
    result = {
      ok: true, text: last.text, tool_calls: rounds[0].tool_calls, usage: last.usage,
      finish: last.finish, chunks: last.chunks, models: last.models, rounds,
    };
  } catch (e) {
    result = { ok: false, error: describeError(args.sdk, e) };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

await main();
