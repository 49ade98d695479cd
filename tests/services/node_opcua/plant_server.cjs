// A node-opcua server the OPC UA tests and bench start (tests/services/opcua.py):
//   node plant_server.cjs --port P --pki DIR [--tags N] [--period MS] [--history] [--static N]
//                         [--reject-unknown-certificates]
// - folder Plant (ns=1) with N Double variables ns=1;s=Plant.Tag<i>, i from 0; every
//   --period ms each takes the value of a tick counter (the ms since the epoch over the
//   period), with that tick as its source timestamp; with --history each is historizing
//   (node-opcua's in-memory historian, HistoryRead ReadRaw with continuation points);
// - ns=1;i=2002 (a numeric NodeId, browse name "2002"): an Int32 counter;
// - with --static N: folder Plant/Static with folders Static<f> of 1000 Doubles each,
//   ns=1;s=Plant.Static.<i>, that never change (an address space to browse);
// - with --reject-unknown-certificates the server offers only Basic256Sha256
//   SignAndEncrypt and trusts no client certificate it has not been given (the
//   certificates it refused are under DIR/PKI/rejected).
// Every listening socket binds 127.0.0.1 (bind_loopback.cjs, preloaded). Prints "ready"
// on stdout once it listens.
"use strict";
const path = require("path");
const {
  OPCUAServer, OPCUACertificateManager, Variant, DataType, StatusCodes, DataValue,
  SecurityPolicy, MessageSecurityMode, nodesets
} = require("node-opcua");

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at < 0 ? fallback : process.argv[at + 1];
}
const flag = (name) => process.argv.includes(name);

const port = Number(option("--port", "4840"));
const pki = option("--pki", path.join(process.cwd(), "pki"));
const tags = Number(option("--tags", "10"));
const period = Number(option("--period", "100"));
const history = flag("--history");
const reject = flag("--reject-unknown-certificates");
const statics = Number(option("--static", "0"));

(async function main() {
  const serverCertificateManager = new OPCUACertificateManager({
    automaticallyAcceptUnknownCertificate: !reject, name: "PKI", rootFolder: path.join(pki, "PKI")
  });
  await serverCertificateManager.initialize();
  const options = {
    port, serverCertificateManager, nodeset_filename: [nodesets.standard],
    serverInfo: { applicationUri: "urn:factoryflow:test:node-opcua-plant", productUri: "factoryflow-plant" },
    serverCapabilities: {
      maxHistoryContinuationPoints: 1000,
      operationLimits: { maxNodesPerRead: 10000, maxNodesPerHistoryReadData: 1000, maxMonitoredItemsPerCall: 10000 }
    },
    maxConnectionsPerEndpoint: 100
  };
  if (reject) {
    options.securityPolicies = [SecurityPolicy.Basic256Sha256];
    options.securityModes = [MessageSecurityMode.SignAndEncrypt];
  }
  const server = new OPCUAServer(options);
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const namespace = addressSpace.getOwnNamespace();
  const plant = namespace.addFolder(addressSpace.rootFolder.objects, { browseName: "Plant" });
  const variables = [];
  // one clock for every source timestamp: node-opcua stamps an initial value with its own
  // high-resolution clock, which can run a few ms ahead of Date.now() and so put the initial
  // value after the first tick in the history
  const created = Date.now();
  for (let i = 0; i < tags; i++) {
    const variable = namespace.addVariable({
      organizedBy: plant, browseName: `Tag${i}`, nodeId: `ns=1;s=Plant.Tag${i}`, dataType: "Double"
    });
    variable.setValueFromSource(new Variant({ dataType: DataType.Double, value: 0 }), StatusCodes.Good,
                                new Date(created));
    if (history) {
      addressSpace.installHistoricalDataNode(variable, { maxOnlineValues: 1000000 });
    }
    variables.push(variable);
  }
  if (statics > 0) {  // folders Static<f> of 1000 variables that never change (a big address space to browse)
    const root = namespace.addFolder(plant, { browseName: "Static" });
    for (let f = 0; f * 1000 < statics; f++) {
      const folder = namespace.addFolder(root, { browseName: `Static${f}` });
      for (let i = f * 1000; i < Math.min(statics, (f + 1) * 1000); i++) {
        namespace.addVariable({
          organizedBy: folder, browseName: `S${i}`, nodeId: `ns=1;s=Plant.Static.${i}`, dataType: "Double",
          value: new Variant({ dataType: DataType.Double, value: i })
        });
      }
    }
  }
  const counter = namespace.addVariable({
    organizedBy: plant, browseName: "2002", nodeId: "ns=1;i=2002", dataType: "Int32",
    value: new Variant({ dataType: DataType.Int32, value: 0 })
  });
  let count = 0;
  setInterval(() => {
    count += 1;
    counter.setValueFromSource(new Variant({ dataType: DataType.Int32, value: count }));
  }, 1000);
  // each tick's stamp is later than the one before and than the initial value's: a timer
  // may fire a little early (the boundary it was set for, less a ms) or late
  let last = Math.floor(created / period);
  function tick() {
    const now = Date.now();
    const value = Math.max(Math.floor((now + period / 10) / period), last + 1);
    last = value;
    const stamp = new Date(value * period);
    for (const variable of variables) {
      variable.setValueFromSource(new Variant({ dataType: DataType.Double, value }), StatusCodes.Good, stamp);
    }
    setTimeout(tick, Math.max(0, (value + 1) * period - Date.now()));  // the boundary after this stamp
  }
  await server.start();
  setTimeout(tick, period - (Date.now() % period));
  process.stdout.write("ready\n");
  const stop = () => server.shutdown(0).then(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
})().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
