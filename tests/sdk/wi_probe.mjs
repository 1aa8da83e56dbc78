// @azure/identity's WorkloadIdentityCredential from the environment the dev env file sets
// (AZURE_* and NODE_EXTRA_CA_CERTS). Usage: node wi_probe.mjs SCOPE; prints {"token"} as JSON
// or exits 1 with the error's name and message.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(process.env.MI_PROBE_MODULES || path.join(here, ".npm"), "x.js"));
const { WorkloadIdentityCredential } = require("@azure/identity");

const [scope] = process.argv.slice(2);
// The emulator is no public cloud: instance discovery (a request to login.microsoftonline.com)
// must be off, as for any authority host Entra's discovery does not know.
const credential = new WorkloadIdentityCredential({ disableInstanceDiscovery: true });
try {
  const token = await credential.getToken(scope);
  console.log(JSON.stringify({ token: token.token }));
} catch (err) {
  console.error(JSON.stringify({ error: err.name, message: String(err.message) }));
  process.exit(1);
}
