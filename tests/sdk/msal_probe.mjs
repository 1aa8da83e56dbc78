// @azure/msal-node's ManagedIdentityApplication against IDENTITY_ENDPOINT/IDENTITY_HEADER.
// Usage: node msal_probe.mjs RESOURCE [userAssignedClientId=ID | userAssignedObjectId=ID |
// userAssignedResourceId=ID]; prints {"token", "expiresOn"} (expiresOn in milliseconds) as JSON
// or exits 1 with the error's name and message.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(process.env.MI_PROBE_MODULES || path.join(here, ".npm"), "x.js"));
const { ManagedIdentityApplication } = require("@azure/msal-node");

const [resource, selector] = process.argv.slice(2);
const managedIdentityIdParams = {};
if (selector) {
  const [key, value] = selector.split(/=(.*)/s);
  managedIdentityIdParams[key] = value;
}
const app = new ManagedIdentityApplication({ managedIdentityIdParams });
try {
  const result = await app.acquireToken({ resource });
  console.log(JSON.stringify({ token: result.accessToken, expiresOn: result.expiresOn.getTime() }));
} catch (err) {
  console.error(JSON.stringify({ error: err.name, message: String(err.message) }));
  process.exit(1);
}
