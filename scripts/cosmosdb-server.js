#!/usr/bin/env node
// Launches the Cosmos DB stand-in (@vercel/cosmosdb-server) for flowcraft's tests and `make dev`.
//
//   node scripts/cosmosdb-server.js --port 8081 [--host 127.0.0.1]
//
// The package's own CLI works, but three of its behaviours make it less faithful to Cosmos DB
// than our tests need, so this launcher corrects them in memory (node_modules is not modified):
//
// 1. A point read of a missing item (or of an existing id under another partition key) throws
//    inside the handler and answers 500; Cosmos answers 404, which the SDK raises as
//    CosmosResourceNotFoundError. Code that treats "not found" as a normal case must see the 404.
// 2. A patch `filter_predicate` ("from c where ...") is lower-cased before it is evaluated, so
//    camelCase paths (c.runId) never match and string literals match case-insensitively. Here the
//    predicate is evaluated as written, against the one item being patched.
// 3. Every response carries `connection: close`, so each SDK request pays a new TLS handshake.
//    Keep-alive is turned on, as the real service does.
// 4. A write sent with `Prefer: return=minimal` (the SDK's `no_response=True`) still echoed the whole
//    item; Cosmos DB answers it without a body, so the stand-in does too.
//
// It also counts traffic per database, for the benchmarks and the byte-budget tests: requests, request
// body bytes ("written": creates, upserts, replaces, patches, query texts) and response body bytes
// ("read": items returned by reads and queries, echoes of writes). Headers are not counted.
//   GET /_flowcraft/traffic            -> {"<database>": {"requests", "requestBytes", "responseBytes"}}
//   GET /_flowcraft/traffic?reset=1    -> the same, then every counter starts again from zero
//
// The handler modules are patched before the server module is loaded, because the route table
// captures the handler functions when it is built.
"use strict";

const path = require("path");

const pkgDir = path.dirname(require.resolve("@vercel/cosmosdb-server/package.json"));
const lib = (name) => require(path.join(pkgDir, "lib", name));

const partitionHeader = lib("utils/get-partition-from-header");
const readDocument = lib("handler/read-document");
const patchOperations = lib("handler/_patch-operations");
// Resolved from the stand-in's own directory: it is the query engine the stand-in itself uses.
const cosmosQuery = require(require.resolve("@zeit/cosmosdb-query", { paths: [pkgDir] })).default;

function isTrue(value) {
  return String(value).toLowerCase() === "true";
}

function notFound(res) {
  res.statusCode = 404;
  return {
    code: "NotFound",
    message: "Entity with the specified id does not exist in the system.",
  };
}

// Fix 1: 404 for a missing item on point read.
const originalRead = readDocument.default;
readDocument.default = (account, req, res, params) => {
  const collection = account.database(params.dbId).collection(params.collId);
  if (collection.read() && !isTrue(req.headers["x-ms-documentdb-query-enablecrosspartition"])) {
    let partitionKey;
    try {
      partitionKey = partitionHeader.parsePartitionKey(
        partitionHeader.default(req),
        params.docId,
      );
    } catch (err) {
      // No/invalid partition key header: the original handler reports it as a 400.
      return originalRead(account, req, res, params);
    }
    if (!collection.document(params.docId, partitionKey).read()) {
      return notFound(res);
    }
  }
  return originalRead(account, req, res, params);
};

// Fix 2: evaluate a patch filter predicate as written, against the item being patched.
const PREDICATE = /^\s*from\s+([A-Za-z_][A-Za-z0-9_]*)\s+where\s+([\s\S]+)$/i;
const originalPatch = patchOperations.patchOperation;
patchOperations.patchOperation = (collection, input) => {
  if (!input.condition) {
    return originalPatch(collection, input);
  }
  const unconditional = { ...input, condition: undefined };
  let item;
  try {
    const partitionKey = partitionHeader.parsePartitionKey(input.partitionKey, input.id);
    item = collection.document(input.id, partitionKey).read();
  } catch (err) {
    return originalPatch(collection, input);
  }
  if (!item) {
    return originalPatch(collection, unconditional); // 404, as the original
  }
  if (input.ifMatch && input.ifMatch !== item._etag) {
    return originalPatch(collection, unconditional); // 412 for the ETag, as the original
  }
  const match = PREDICATE.exec(input.condition);
  let satisfied;
  try {
    if (!match) throw new Error("predicate must read `from <alias> where <condition>`");
    const query = cosmosQuery(`SELECT * FROM ${match[1]} WHERE ${match[2]}`);
    satisfied = query.exec([item]).result.length > 0;
  } catch (err) {
    return {
      statusCode: 400,
      body: { code: "BadRequest", message: `Invalid condition in patch request: ${err.message}` },
    };
  }
  if (!satisfied) {
    return {
      statusCode: 412,
      body: {
        code: "PreconditionFailed",
        message: "Condition specified in the patch request is not satisfied.",
      },
    };
  }
  return originalPatch(collection, unconditional);
};

function parseArgs(argv) {
  const args = { port: 8081, host: "127.0.0.1" };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === "--port" || argv[i] === "-p") args.port = parseInt(argv[(i += 1)], 10);
    else if (argv[i] === "--host") args.host = argv[(i += 1)];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return args;
}

const traffic = new Map();

function trafficOf(url) {
  const match = /^\/+dbs\/([^/?]+)/.exec(url || "");
  const db = match ? decodeURIComponent(match[1]) : "";
  let entry = traffic.get(db);
  if (!entry) {
    entry = { requests: 0, requestBytes: 0, responseBytes: 0 };
    traffic.set(db, entry);
  }
  return entry;
}

function serveTraffic(req, res) {
  const body = JSON.stringify(Object.fromEntries(traffic));
  if (/[?&]reset=1\b/.test(req.url)) traffic.clear();
  res.setHeader("content-type", "application/json");
  res.end(body);
}

// Fix 4 and the counting, around the stand-in's own request handler.
function wrap(handler) {
  return (req, res) => {
    if (req.url.startsWith("/_flowcraft/traffic")) return serveTraffic(req, res);
    const entry = trafficOf(req.url);
    entry.requests += 1;
    entry.requestBytes += parseInt(req.headers["content-length"] || "0", 10) || 0;
    const minimal =
      String(req.headers.prefer || "").toLowerCase() === "return=minimal" &&
      ["POST", "PUT", "PATCH"].includes(req.method) &&
      !isTrue(req.headers["x-ms-documentdb-isquery"]) &&
      req.headers["content-type"] !== "application/query+json";
    const end = res.end.bind(res);
    res.end = (chunk, ...rest) => {
      let out = chunk;
      if (minimal && res.statusCode >= 200 && res.statusCode < 300 && typeof out === "string") out = "";
      if (out) entry.responseBytes += Buffer.byteLength(out);
      return end(out, ...rest);
    };
    return handler(req, res);
  };
}

const args = parseArgs(process.argv.slice(2));
const { createHttpsServer } = require("@vercel/cosmosdb-server");
const server = createHttpsServer({ keepAlive: true });
const handlers = server.listeners("request");
server.removeAllListeners("request");
for (const handler of handlers) server.on("request", wrap(handler));
server.on("error", (err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
server.listen(args.port, args.host, () => {
  const { port } = server.address();
  console.log(`Ready to accept HTTPS connections at ${args.host}:${port}`);
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
