// Runs conformance cases through Flowcraft itself (the npm package) and prints what happened.
//
//   node tests/conformance/driver.mjs cases.json results.json
//
// cases.json is a list of cases (see tests/conformance/cases.py for the format); results.json gets one
// observation per case: final status, every stub call (uses key and input), the final context.
import { readFileSync, writeFileSync } from "node:fs";
import { FlowRuntime, PropertyEvaluator, UnsafeEvaluator } from "flowcraft";

// A node's deterministic behaviour, shared word for word with the Python side (stubs.py).
function makeStub(uses, behaviour, trace, counters) {
	return async (ctx) => {
		const call = counters[uses] ?? 0;
		counters[uses] = call + 1;
		trace.push({ uses, input: ctx.input === undefined ? null : structuredClone(ctx.input) });
		if (behaviour.sleepMs) await new Promise((resolve) => setTimeout(resolve, behaviour.sleepMs));
		if (behaviour.failAlways || call < (behaviour.fail ?? 0)) {
			throw new Error(`${uses} failed (call ${call + 1})`);
		}
		for (const [key, value] of Object.entries(behaviour.set ?? {})) await ctx.context.set(key, value);
		let output = behaviour.outputs ? behaviour.outputs[Math.min(call, behaviour.outputs.length - 1)] : behaviour.output;
		if (behaviour.incr) {
			const next = ((await ctx.context.get(behaviour.incr)) ?? 0) + 1;
			await ctx.context.set(behaviour.incr, next);
			output = next;
		}
		if (output === undefined) output = uses;
		const action = behaviour.actions ? behaviour.actions[Math.min(call, behaviour.actions.length - 1)] : behaviour.action;
		return action === undefined ? { output } : { output, action };
	};
}

async function runCase(c) {
	const trace = [];
	const counters = {};
	const registry = {};
	for (const [uses, behaviour] of Object.entries(c.behaviours ?? {})) registry[uses] = makeStub(uses, behaviour, trace, counters);
	const blueprints = { ...(c.blueprints ?? {}), [c.blueprint.id]: c.blueprint };
	const evaluator = c.evaluator === "unsafe" ? new UnsafeEvaluator() : new PropertyEvaluator();
	const quiet = { debug() {}, info() {}, warn() {}, error() {} };
	const runtime = new FlowRuntime({ registry, blueprints, evaluator, logger: quiet });
	const resumes = [...(c.resume ?? [])];
	let result = await runtime.run(c.blueprint, structuredClone(c.context ?? {}));
	for (let guard = 0; result.status === "awaiting" && guard < 20; guard++) {
		const details = result.context._awaitingDetails ?? {};
		const waiting = result.context._awaitingNodeIds ?? [];
		const timer = waiting.find((id) => details[id]?.reason === "timer");
		if (timer) {
			// What Flowcraft's WorkflowScheduler does once the wake-up time has passed.
			const delay = Math.max(0, new Date(details[timer].wakeUpAt).getTime() - Date.now());
			await new Promise((resolve) => setTimeout(resolve, delay));
			result = await runtime.resume(c.blueprint, result.serializedContext, { output: undefined }, timer);
			continue;
		}
		const step = resumes.shift();
		if (!step) break;
		result = await runtime.resume(c.blueprint, result.serializedContext, { output: step.output, action: step.action }, step.nodeId);
	}
	return { status: result.status, context: result.context, trace };
}

// console.error would interleave Flowcraft's own evaluator messages with ours; keep them apart.
const errors = [];
console.error = (...args) => errors.push(args.map(String).join(" "));

const [inPath, outPath] = process.argv.slice(2);
const cases = JSON.parse(readFileSync(inPath, "utf8"));
const out = {};
for (const c of cases) {
	try {
		out[c.name] = await runCase(c);
	} catch (error) {
		out[c.name] = { status: "threw", error: String(error?.message ?? error), context: {}, trace: [] };
	}
}
writeFileSync(outPath, JSON.stringify(out));
