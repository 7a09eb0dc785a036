#!/usr/bin/env node
// The SurrealDB server the tests talk to: the real SurrealDB engine (npm @surrealdb/node, which
// embeds SurrealDB 3.0.2 as a native module) behind a small HTTP front that reimplements what
// the `surreal` binary's HTTP layer does (surrealdb/server/src/ntw/*.rs at v3.0.2): routing,
// the auth check, request sessions and the reply shapes. Every statement, every RPC method, the
// sign-in (password check, JWT issue and verification) and the storage are the engine's own.
//
//   node front.mjs --port P [--host 127.0.0.1] [--data DIR] [--user root --pass root]
//
// --data DIR keeps the store on disk (RocksDB, as `surreal start rocksdb:DIR`), so a front
// killed with SIGKILL and started again on the same DIR finds its rows; without it the store
// is in memory. Prints `ready <port>` on stdout once listening. docs/testing.md "SurrealDB"
// says what is real here and what is the front's.
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { CborCodec, Uuid } from "surrealdb";

const PROG = "front.mjs";
// The server's limits (surrealdb/server/src/cnf/mod.rs defaults) and hyper's request line.
const MAX_SQL_BODY = 1 << 20; // SURREAL_HTTP_MAX_SQL_BODY_SIZE
const MAX_RPC_BODY = 4 << 20; // SURREAL_HTTP_MAX_RPC_BODY_SIZE
const MAX_SIGNIN_BODY = 1 << 10; // SURREAL_HTTP_MAX_SIGNIN_BODY_SIZE
const MAX_URI = 65534; // hyper's MAX_URI_LEN (u16::MAX - 1): longer is 414 URI Too Long
const MAX_HEADERS = 400 * 1024; // hyper's default read buffer; node's default would be 16 KiB

function usage(msg) {
  process.stderr.write(
    `${PROG}: ${msg}\nusage: node ${PROG} --port P [--host ADDR] [--data DIR] ` +
      `[--user U --pass P]\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = { port: null, host: "127.0.0.1", data: null, user: "root", pass: "root" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case "--port": {
        const v = val();
        if (!/^[0-9]{1,5}$/.test(v) || Number(v) > 65535)
          usage(`--port "${v}" is not a port number (0..65535; 0 = any free port)`);
        o.port = Number(v);
        break;
      }
      case "--host":
        o.host = val();
        if (o.host === "") usage("--host is empty");
        break;
      case "--data":
        o.data = val();
        if (o.data === "") usage("--data is empty");
        break;
      case "--user":
        o.user = val();
        if (!/^[A-Za-z0-9_]{1,64}$/.test(o.user))
          usage(`--user "${o.user}" must be 1..64 letters, digits or _`);
        break;
      case "--pass":
        o.pass = val();
        if (o.pass === "") usage("--pass is empty");
        break;
      case "-h":
      case "--help":
        process.stdout.write(`usage: node ${PROG} --port P [--host ADDR] [--data DIR] ` +
          `[--user U --pass P]\n`);
        process.exit(0);
        break;
      default:
        usage(`unknown argument "${a}"`);
    }
  }
  if (o.port === null) usage("--port is required");
  return o;
}

// The engine's native module, loaded directly: its JS wrapper (NodeEngine) hides the RPC
// channel behind the SDK's client, and the front needs the raw RPC replies and one engine
// session per HTTP request (the RPC "attach"/"detach" methods), as the server has.
function loadEngine() {
  const require = createRequire(import.meta.url);
  // The package exports only its ESM entry (dist/surrealdb-node.mjs); the .node files sit
  // beside it.
  let dir;
  try {
    dir = path.dirname(new URL(import.meta.resolve("@surrealdb/node")).pathname);
  } catch {
    dir = path.join(path.dirname(new URL(import.meta.url).pathname),
      "node_modules/@surrealdb/node/dist");
  }
  const names = [];
  if (process.platform === "linux") {
    names.push(`surrealdb-node.linux-${process.arch}-gnu.node`);
    names.push(`surrealdb-node.linux-${process.arch}-musl.node`);
  } else {
    names.push(`surrealdb-node.${process.platform}-${process.arch}.node`);
  }
  const errors = [];
  for (const n of names) {
    try {
      return require(path.join(dir, n)).SurrealNodeEngine;
    } catch (e) {
      errors.push(`${n}: ${e.message}`);
    }
  }
  throw new Error(`cannot load the SurrealDB engine from ${dir}: ${errors.join("; ")}`);
}

const cbor = new CborCodec({});
let engine = null;
let version = "surrealdb-3.0.2";
let rpcSeq = 0;

class RpcError extends Error {
  constructor(err) {
    super(typeof err?.message === "string" ? err.message : String(err));
    this.rpc = err;
  }
}

// A whole JSON number past 2^53 (1.6000000000000001e+20: a float32 of an embedding's vector
// printed by the driver) is a float to the server (serde_json reads a number with a fraction or
// an exponent as f64), but JSON.parse makes it a Number that the CBOR encoder refuses ("Number too
// big to be encoded", a 500). Such numbers are encoded as float64 here: swapped for unique
// placeholder strings, whose encoded bytes are then replaced by the float's. Found by
// tests/chaos (issue 12): every embedding put through khalad failed and L3 never drained.
function encodeRequest(req) {
  const big = [];
  const nonce = randomUUID();
  const swap = (x) => {
    if (typeof x === "number")
      return Number.isInteger(x) && !Number.isSafeInteger(x)
        ? `\u0000khala-f64:${nonce}:${big.push(x) - 1}`
        : x;
    if (Array.isArray(x)) return x.map(swap);
    if (x && typeof x === "object" && Object.getPrototypeOf(x) === Object.prototype) {
      const o = {};
      for (const [k, v] of Object.entries(x)) o[k] = swap(v);
      return o;
    }
    return x;
  };
  const swapped = swap(req);
  let out = Buffer.from(cbor.encode(swapped));
  big.forEach((x, i) => {
    const mark = Buffer.from(cbor.encode(`\u0000khala-f64:${nonce}:${i}`));
    const f = Buffer.alloc(9);
    f[0] = 0xfb;
    f.writeDoubleBE(x, 1);
    const at = out.indexOf(mark);
    if (at >= 0) out = Buffer.concat([out.subarray(0, at), f, out.subarray(at + mark.length)]);
  });
  return out;
}

// One RPC call on the engine; returns its result or throws RpcError with the engine's error
// object ({code, kind, message, details}).
async function call(method, params, session) {
  const req = { id: ++rpcSeq, method };
  if (params !== undefined) req.params = params;
  if (session !== undefined) req.session = session;
  const out = cbor.decode(await engine.execute(encodeRequest(req)));
  if (out && typeof out === "object" && !Array.isArray(out) && "error" in out) {
    const keys = Object.keys(out);
    if (keys.length === 1 || (keys.length === 2 && "id" in out)) throw new RpcError(out.error);
  }
  return out;
}

// JSON as the server writes it (surrealdb_types Value::into_json_value, v3.0.2): NONE and NULL
// as null, also as an object's field (a statement's "result": null, "type": null); record ids,
// datetimes, uuids, durations, decimals, tables as strings (the SDK classes' toJSON); bytes as
// an array of numbers; NaN and infinities as null; integers past 2^53 exact.
function toJson(x) {
  if (x === undefined || x === null) return "null";
  if (typeof x === "bigint") return x.toString();
  if (typeof x === "number") return Number.isFinite(x) ? JSON.stringify(x) : "null";
  if (typeof x === "string" || typeof x === "boolean") return JSON.stringify(x);
  if (x instanceof Uint8Array || x instanceof ArrayBuffer)
    return `[${Array.from(new Uint8Array(x)).join(",")}]`;
  if (Array.isArray(x) || x instanceof Set) return `[${Array.from(x, toJson).join(",")}]`;
  if (x instanceof Date) return JSON.stringify(x.toISOString());
  if (x instanceof Map) x = Object.fromEntries(x);
  else if (Object.getPrototypeOf(x) !== Object.prototype && typeof x.toJSON === "function")
    return toJson(x.toJSON());
  const parts = [];
  for (const [k, val] of Object.entries(x)) parts.push(`${JSON.stringify(k)}:${toJson(val)}`);
  return `{${parts.join(",")}}`;
}

// ---- replies --------------------------------------------------------------------------------

function send(res, status, body, type) {
  const headers = {};
  if (type) headers["content-type"] = type;
  res.writeHead(status, headers);
  res.end(body ?? "");
}

// The server's ErrorMessage (ntw/error.rs): {code, details, description?, information?}.
function errorMessage(res, code, details, description, information) {
  const o = { code, details };
  if (description !== undefined) o.description = description;
  if (information !== undefined) o.information = information;
  send(res, code, JSON.stringify(o), "application/json");
}

const BAD_REQUEST_DESC =
  "There is a problem with your request. Refer to the documentation for further information.";
const AUTH_DESC =
  "Your authentication details are invalid. Reauthenticate using valid authentication " +
  "parameters.";

function badRequest(res, information) {
  errorMessage(res, 400, "Request problems dectected", BAD_REQUEST_DESC, information);
}

function forbiddenRoute(res, route) {
  errorMessage(res, 403, "Forbidden", "Not allowed to do this.",
    `The HTTP route '${route}' is forbidden`);
}

function unsupportedType(res) {
  errorMessage(res, 415, "Unsupported media type",
    "The request needs to adhere to certain constraints. Refer to the documentation for " +
      "supported content types.");
}

// ResponseError::into_response for an error from the engine: classified by its text.
function responseError(res, message) {
  const low = message.toLowerCase();
  if (low.includes("authentication") || low.includes("invalidauth"))
    return errorMessage(res, 401, "Authentication failed", AUTH_DESC,
      "There was a problem with authentication");
  if (low.includes("notallowed") || low.includes("not allowed") || low.includes("forbidden") ||
      low.includes("not enough permissions"))
    return errorMessage(res, 403, "Forbidden", "Not allowed to do this.", message);
  return badRequest(res, message);
}

// ---- headers --------------------------------------------------------------------------------

// The Accept header as the server's typed header reads it: the part before ';'.
// Returns null when absent, "invalid" when present but not one it knows.
function accept(req) {
  const v = req.headers["accept"];
  if (v === undefined) return null;
  const t = v.split(";")[0];
  switch (t) {
    case "*/*":
    case "application/json":
      return "json";
    case "application/cbor":
      return "cbor";
    case "text/plain":
      return "text";
    case "application/octet-stream":
      return "octet";
    case "application/vnd.surrealdb.flatbuffers":
      return "flatbuffers";
    default:
      return "invalid";
  }
}

// surreal-ns / surreal-db (3.x; the server reads no other), and the 1.x/2.x `ns` / `db` as a
// fallback so an older client's requests still land somewhere.
function header(req, name, legacy) {
  const v = req.headers[name];
  if (v !== undefined) return v;
  return legacy ? req.headers[legacy] : undefined;
}

// ---- sessions -------------------------------------------------------------------------------

// Basic credentials the engine accepted, with the token its sign-in issued: the next request with
// the same credentials authenticates the session with that token (an HMAC check) instead of
// signing in again (an Argon2 password check, ~80 ms here: the server pays it on every request,
// which would make a test suite crawl). A token near its expiry is replaced by a new sign-in;
// a statement that defines, alters or removes a user or an access method empties the cache.
const basicCache = new Map();
const TOKEN_MARGIN_MS = 60_000;

function tokenExpiryMs(token) {
  try {
    const payload = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"));
    return typeof payload.exp === "number" ? payload.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

async function basicSignin(creds, session) {
  const key = JSON.stringify([creds.user, creds.pass, creds.ns ?? null, creds.db ?? null]);
  const hit = basicCache.get(key);
  if (hit && hit.expiresMs - TOKEN_MARGIN_MS > Date.now()) {
    try {
      await call("authenticate", [hit.token], session);
      return;
    } catch {
      basicCache.delete(key); // revoked or invalid now: sign in for real below
    }
  }
  const token = await call("signin", [creds], session);
  const access = typeof token === "string" ? token : token?.access;
  if (typeof access === "string") {
    if (basicCache.size > 64) basicCache.clear();
    basicCache.set(key, { token: access, expiresMs: tokenExpiryMs(access) });
  }
}

function forgetCredentialsIfChanged(sql) {
  if (typeof sql === "string" && /\b(USER|ACCESS)\b/i.test(sql)) basicCache.clear();
}

// One engine session per HTTP request, signed in as the request says (ntw/auth.rs check_auth):
// Basic runs the engine's own sign-in (password check), Bearer its token check. A request
// without credentials is anonymous. Returns {session, authed} or writes the 401 and returns
// null. The caller must end() it.
async function openSession(req, res) {
  const idh = req.headers["surreal-id"];
  if (idh !== undefined &&
      !/^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i.test(idh)) {
    send(res, 401, "The request body contains invalid data");
    return null;
  }
  const session = new Uuid(randomUUID());
  await call("attach", undefined, session);
  const s = { session, authed: false };
  try {
    const auth = req.headers["authorization"] ?? "";
    const basic = /^Basic\s+(\S+)$/i.exec(auth);
    const bearer = /^Bearer\s+(\S+)$/i.exec(auth);
    if (basic) {
      const dec = Buffer.from(basic[1], "base64").toString("utf8");
      const colon = dec.indexOf(":");
      if (colon >= 0) {
        const creds = { user: dec.slice(0, colon), pass: dec.slice(colon + 1) };
        const ans = req.headers["surreal-auth-ns"];
        const adb = req.headers["surreal-auth-db"];
        if (ans !== undefined) creds.ns = ans;
        if (adb !== undefined) creds.db = adb;
        await basicSignin(creds, session);
        s.authed = true;
      }
    } else if (bearer) {
      await call("authenticate", [bearer[1]], session);
      s.authed = true;
    }
    const ns = header(req, "surreal-ns", "ns");
    const db = header(req, "surreal-db", "db");
    if (ns !== undefined || db !== undefined) await call("use", [ns, db], session);
  } catch (e) {
    await end(s);
    if (!(e instanceof RpcError)) throw e;
    send(res, 401, e.message);
    return null;
  }
  return s;
}

async function end(s) {
  try {
    await call("detach", undefined, s.session);
  } catch {
    // The session is gone already: nothing to undo.
  }
}

// ---- routes ---------------------------------------------------------------------------------

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let n = 0;
    let over = false;
    req.on("data", (c) => {
      n += c.length;
      if (n > limit) over = true;
      else chunks.push(c);
    });
    req.on("end", () => resolve(over ? null : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function tooLarge(res) {
  send(res, 413, "length limit exceeded");
}

function utf8(buf) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(buf);
  } catch {
    return null;
  }
}

// POST /sql (ntw/sql.rs): the body is SurrealQL, the variables the URL's query string (each a
// string: Variables::from(BTreeMap<String, String>)). 200 with one {status, time, result} per
// statement (a failed statement is status "ERR" inside the 200); a query that does not parse
// or cannot run at all is the server's 400 (ResponseError).
async function routeSql(req, res, url, s) {
  const body = await readBody(req, MAX_SQL_BODY);
  if (body === null) return tooLarge(res);
  const fmt = accept(req);
  if (fmt !== null && fmt !== "json" && fmt !== "cbor") return unsupportedType(res);
  if (!s.authed) return forbiddenRoute(res, "sql");
  const sql = utf8(body);
  if (sql === null) return badRequest(res, "Non UTF-8 request body");
  const vars = {};
  for (const [k, v] of url.searchParams) vars[k] = v;
  forgetCredentialsIfChanged(sql);
  let out;
  try {
    out = await call("query", [sql, vars], s.session);
    forgetCredentialsIfChanged(sql);
  } catch (e) {
    if (!(e instanceof RpcError)) throw e;
    return responseError(res, e.message);
  }
  if (fmt === "cbor") return send(res, 200, Buffer.from(cbor.encode(out)), "application/cbor");
  return send(res, 200, toJson(out), "application/json");
}

// RPC methods an anonymous request may call: the rest need a signed-in session (the server
// runs them for a guest and refuses them statement by statement; see docs/testing.md).
const ANON_METHODS = new Set(["ping", "version", "signin", "signup", "authenticate", "use",
  "info", "invalidate", "reset"]);
// Methods that manage the engine's own sessions or live queries: over HTTP each request is a
// session of its own that ends with the request, so the front refuses them.
const REFUSED_METHODS = new Set(["attach", "detach", "sessions", "live", "kill", "begin",
  "commit", "cancel"]);

function contentType(req) {
  const v = req.headers["content-type"];
  if (v === undefined) return null;
  switch (v.split(";")[0].trim()) {
    case "application/json":
      return "json";
    case "application/cbor":
      return "cbor";
    case "text/plain":
    case "application/octet-stream":
      return "unsupported";
    case "application/vnd.surrealdb.flatbuffers":
      return "flatbuffers";
    default:
      return "invalid";
  }
}

function rpcReply(res, fmt, reply) {
  if (fmt === "cbor") return send(res, 200, Buffer.from(cbor.encode(reply)), "application/cbor");
  return send(res, 200, toJson(reply), "application/json");
}

// POST /rpc (ntw/rpc.rs post_handler): body {id, method, params}, JSON or CBOR as its
// Content-Type says (Accept, if given, must match). The reply is {"result": ...} or
// {"error": {code, kind, message, details?}} in a 200; over HTTP the server does not echo the
// request's id (DbResponse::success(None, None, ..)).
async function routeRpc(req, res, s) {
  const ct = contentType(req);
  if (ct === null) return badRequest(res, "Header of type `content-type` was missing");
  if (ct === "invalid")
    return badRequest(res, "Header of type `content-type` was invalid");
  if (ct !== "json" && ct !== "cbor") return unsupportedType(res);
  const acc = accept(req);
  if (acc === "invalid") return unsupportedType(res);
  if (acc !== null && acc !== ct) return unsupportedType(res);
  const body = await readBody(req, MAX_RPC_BODY);
  if (body === null) return tooLarge(res);
  let msg;
  try {
    msg = ct === "json" ? JSON.parse(utf8(body) ?? "\u0000") : cbor.decode(body);
  } catch {
    return badRequest(res, "Parse error");
  }
  if (!msg || typeof msg !== "object" || Array.isArray(msg)) return badRequest(res, "Parse error");
  if (typeof msg.method !== "string") return badRequest(res, "Invalid request");
  if (msg.params !== undefined && msg.params !== null && !Array.isArray(msg.params))
    return badRequest(res, "Invalid request");
  const method = msg.method;
  const params = Array.isArray(msg.params) ? msg.params : [];
  if (REFUSED_METHODS.has(method) || msg.session !== undefined || msg.txn !== undefined)
    return rpcReply(res, ct, {
      error: {
        code: -32000,
        kind: "Internal",
        message: `The test front does not serve "${method}" or per-request session/txn over ` +
          "HTTP: every HTTP request is its own session (see docs/testing.md)",
      },
    });
  if (!s.authed && !ANON_METHODS.has(method))
    return rpcReply(res, ct, {
      error: {
        code: -32602,
        kind: "NotAllowed",
        details: { kind: "Method", details: { name: method } },
        message: `Method not allowed: ${method}`,
      },
    });
  if (method === "query") forgetCredentialsIfChanged(params[0]);
  try {
    const result = await call(method, params, s.session);
    if (method === "query") forgetCredentialsIfChanged(params[0]);
    return rpcReply(res, ct, { result });
  } catch (e) {
    if (!(e instanceof RpcError)) throw e;
    return rpcReply(res, ct, { error: e.rpc });
  }
}

// POST /signin (ntw/signin.rs): JSON {user, pass[, ns, db, ac...]} -> by Accept:
// application/json {"code":200,"details":"Authentication succeeded","token":...}, text/plain
// the token alone, none: an empty 200.
async function routeSignin(req, res, s) {
  const body = await readBody(req, MAX_SIGNIN_BODY);
  if (body === null) return tooLarge(res);
  const text = utf8(body);
  if (text === null) return badRequest(res, "Non UTF-8 request body");
  let vars;
  try {
    vars = JSON.parse(text);
  } catch {
    vars = null;
  }
  if (!vars || typeof vars !== "object" || Array.isArray(vars))
    return badRequest(res, "The request body contains invalid data");
  let token;
  try {
    token = await call("signin", [vars], s.session);
  } catch (e) {
    if (!(e instanceof RpcError)) throw e;
    return responseError(res, e.message);
  }
  const access = typeof token === "string" ? token : token?.access;
  switch (accept(req)) {
    case "json":
      return send(res, 200,
        toJson({ code: 200, details: "Authentication succeeded", token }),
        "application/json");
    case "cbor":
      return send(res, 200,
        Buffer.from(cbor.encode({ code: 200, details: "Authentication succeeded", token })),
        "application/cbor");
    case "text":
      return send(res, 200, access, "text/plain");
    case null:
      return send(res, 200);
    default:
      return unsupportedType(res);
  }
}

const ROUTES = {
  "/": ["GET"],
  "/status": ["GET"],
  "/health": ["GET"],
  "/version": ["GET"],
  "/sql": ["GET", "POST", "OPTIONS"],
  "/rpc": ["GET", "POST", "OPTIONS"],
  "/signin": ["POST", "OPTIONS"],
};

async function handle(req, res) {
  res.setHeader("server", "SurrealDB");
  res.setHeader("surreal-version", version.replace("-", "/"));
  res.setHeader("x-request-id", req.headers["x-request-id"] ?? randomUUID());
  if (req.url.length > MAX_URI) return send(res, 414);
  const url = new URL(req.url, "http://front");
  const allowed = ROUTES[url.pathname];
  // The auth layer runs before routing, for every route (ntw/mod.rs).
  const s = await openSession(req, res);
  if (s === null) return;
  try {
    if (!allowed) return send(res, 404);
    if (!allowed.includes(req.method)) return send(res, 405);
    if (req.method === "OPTIONS") return send(res, 200);
    switch (url.pathname) {
      case "/":
        res.setHeader("location", "https://surrealdb.com/app");
        return send(res, 307);
      case "/status":
        return send(res, 200);
      case "/health":
        try {
          await call("ping", undefined, s.session);
          await call("query", ["RETURN 1"], s.session);
        } catch (e) {
          return errorMessage(res, 500, "Health check failed",
            "The database health check for this instance failed. There was an issue with the " +
              "underlying storage engine.",
            `There was a problem connecting with the storage engine: ${e.message}`);
        }
        return send(res, 200);
      case "/version":
        return send(res, 200, version, "text/plain; charset=utf-8");
      case "/sql":
      case "/rpc":
        if (req.method === "GET")
          return send(res, 400, "Connection header did not include 'upgrade'");
        return await (url.pathname === "/sql" ? routeSql(req, res, url, s) : routeRpc(req, res, s));
      case "/signin":
        return await routeSignin(req, res, s);
    }
  } finally {
    await end(s);
  }
}

// SurrealQL string literal for DEFINE USER ... PASSWORD (which takes a literal, not a $param).
function sqlString(s) {
  return `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  let SurrealNodeEngine;
  try {
    SurrealNodeEngine = loadEngine();
  } catch (e) {
    process.stderr.write(`${PROG}: ${e.message}\n(run npm ci in ${path.dirname(
      new URL(import.meta.url).pathname)}, or scripts/deps.sh)\n`);
    process.exit(1);
  }
  let where = "mem://";
  if (o.data !== null) {
    const dir = path.resolve(o.data);
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      usage(`--data ${o.data}: cannot create it: ${e.message}`);
    }
    where = `rocksdb://${dir}`;
  }
  try {
    engine = await SurrealNodeEngine.connect(where, undefined);
    version = await call("version");
    // The root user the server's --user/--pass define (OVERWRITE: a restart with another
    // password on the same --data takes the new one).
    await call("query", [`DEFINE USER OVERWRITE ${o.user} ON ROOT PASSWORD ` +
      `${sqlString(o.pass)} ROLES OWNER`]);
  } catch (e) {
    process.stderr.write(`${PROG}: cannot open the SurrealDB engine at ${where}: ${e.message}\n`);
    process.exit(1);
  }

  const server = http.createServer({ maxHeaderSize: MAX_HEADERS }, (req, res) => {
    handle(req, res).catch((e) => {
      process.stderr.write(`${PROG}: ${req.method} ${req.url}: ${e.stack ?? e}\n`);
      if (!res.headersSent)
        errorMessage(res, 500, "An error occurred while processing this API request",
          String(e.message ?? e));
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 60_000;
  server.on("error", (e) => {
    process.stderr.write(`${PROG}: cannot listen on ${o.host}:${o.port}: ${e.message}\n`);
    process.exit(1);
  });
  const stop = (sig) => {
    process.stderr.write(`${PROG}: ${sig}: closing\n`);
    server.close();
    server.closeAllConnections?.();
    try {
      engine.free?.();
    } catch {
      // Exiting anyway.
    }
    // The engine's threads can keep node alive after free(): leave now.
    process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  server.listen(o.port, o.host, () => {
    process.stdout.write(`ready ${server.address().port}\n`);
  });
}

main();
