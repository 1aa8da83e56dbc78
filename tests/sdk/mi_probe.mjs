// @azure/identity's ManagedIdentityCredential against IDENTITY_ENDPOINT/IDENTITY_HEADER.
// Usage: node mi_probe.mjs SCOPE [CLIENT_ID | clientId=ID | objectId=ID | resourceId=ID];
// prints {"token", "expiresOnTimestamp"} as JSON (expiresOnTimestamp in milliseconds, as the
// SDK reports it) or exits 1 with the error's name and message.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(process.env.MI_PROBE_MODULES || path.join(here, ".npm"), "x.js"));
const { ManagedIdentityCredential } = require("@azure/identity");

const [scope, selector] = process.argv.slice(2);
let options;
if (selector && selector.includes("=")) {
  const [key, value] = selector.split(/=(.*)/s);
  options = { [key]: value };
} else if (selector) {
  options = { clientId: selector };
}
const credential = options ? new ManagedIdentityCredential(options) : new ManagedIdentityCredential();
try {
  const token = await credential.getToken(scope);
  console.log(JSON.stringify({ token: token.token, expiresOnTimestamp: token.expiresOnTimestamp }));
} catch (err) {
  console.error(JSON.stringify({ error: err.name, message: String(err.message) }));
  process.exit(1);
}
