// Calls pinet's NetworkService over TLS, as any client in another language would:
// trust the cluster CA (.pinet/pki/ca.crt in the local stack), send the token as
// "authorization: Bearer <token>" metadata.
//
//   PINET_API=127.0.0.1:7700 PINET_CA=.pinet/pki/ca.crt PINET_TOKEN_FILE=.pinet/token node whoami.js
//
// Prints the caller's tenant and network as JSON, then the services it can see.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const protos = path.resolve(__dirname, "../../protos");
const definition = protoLoader.loadSync(path.join(protos, "pinet/network/v1/network.proto"), {
  includeDirs: [protos],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { NetworkService } = grpc.loadPackageDefinition(definition).pinet.network.v1;

function env(name, fallback) {
  const value = process.env[name] || fallback;
  if (!value) {
    console.error(`set ${name}`);
    process.exit(2);
  }
  return value;
}

const address = env("PINET_API", "127.0.0.1:7700");
const ca = fs.readFileSync(env("PINET_CA", ".pinet/pki/ca.crt"));
const token = process.env.PINET_TOKEN || fs.readFileSync(env("PINET_TOKEN_FILE", ".pinet/token"), "utf8").trim();

const client = new NetworkService(address, grpc.credentials.createSsl(ca));
const metadata = new grpc.Metadata();
metadata.add("authorization", `Bearer ${token}`);

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 10000 }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

(async () => {
  try {
    const me = await call("WhoAmI", {});
    console.log(JSON.stringify({ tenant: me.tenant, admin: me.admin, network: me.tenant_info.network }));
    const services = await call("ListServices", {});
    console.log(`services: ${services.services.map((s) => s.metadata.name).join(", ") || "(none)"}`);
  } catch (err) {
    console.error(`error: ${grpc.status[err.code]}: ${err.details}`);
    process.exit(1);
  } finally {
    client.close();
  }
})();
