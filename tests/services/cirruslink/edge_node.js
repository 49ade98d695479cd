// A Sparkplug B edge node built on Cirrus Link's sparkplug-client (and its sparkplug-payload
// encoder, protobufjs), for the tests: an outside encoder, not the project's.
//
// Arguments: port group node device messages interval_ms expect_file
// On connecting it publishes an NBIRTH and a DBIRTH of `device` naming a metric of each scalar
// Sparkplug datatype and a DataSet, with aliases, then `messages` DDATA by alias with negative and
// extreme values (Int8/Int16 go out as sparkplug-payload writes them: into uint32 int_value,
// sign-extended), every `interval_ms`; then a DDEATH, and stops (the client publishes the NDEATH).
// A Rebirth NCMD is answered with new births. Every record-bearing message's values go to
// `expect_file` (JSON lines, as tests/services/tahu/EdgeNode.java writes them); stdout says
// "rebirth" per answered request and "done <published>" at the end.
const fs = require("fs");
const sparkplug = require("sparkplug-client");

const [port, group, node, device, messagesArg, intervalArg, expectFile] = process.argv.slice(2);
const messages = Number(messagesArg), interval = Number(intervalArg);
const T0 = 1767225600000;
const pick = (values, i) => values[i % values.length];
const TYPES = ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float", "Double",
               "Boolean", "String", "DateTime", "Text", "UUID", "Bytes", "DataSet"];

function value(type, i) {  // [the value given to sparkplug-payload, its expected JSON form]
  switch (type) {
    case "Int8": { const v = pick([-128, -5, -1, 0, 127], i); return [v, v]; }
    case "Int16": { const v = pick([-32768, -300, 0, 32767], i); return [v, v]; }
    case "Int32": { const v = pick([-2147483648, -70000, -1, 2147483647], i); return [v, v]; }
    case "Int64": { const v = pick([-5000000000, -1, 0, 9007199254740991], i); return [v, v]; }
    case "UInt8": { const v = pick([0, 200, 255], i); return [v, v]; }
    case "UInt16": { const v = pick([0, 40000, 65535], i); return [v, v]; }
    case "UInt32": { const v = pick([0, 3000000000, 4294967295], i); return [v, v]; }
    case "UInt64": { const v = pick([0, 9007199254740991], i); return [v, v]; }
    case "Float": { const v = pick([3.25, -0.5, 1e30], i); return [v, Math.fround(v)]; }
    case "Double": { const v = pick([-1e308, 2.5, 1 / 3], i); return [v, v]; }
    case "Boolean": { const v = i % 2 === 0; return [v, v]; }
    case "String": { const v = `s-${i}-\u00fc`; return [v, v]; }
    case "DateTime": { const v = T0 - 86400000 + i * 1000; return [v, v]; }
    case "Text": { const v = `line ${i}\nnext`; return [v, v]; }
    case "UUID": { const v = `00000000-0000-002a-0000-${String(i).padStart(12, "0")}`; return [v, v]; }
    case "Bytes": { const v = Buffer.from([i % 256, 255, 0]); return [v, v.toString("hex")]; }
    case "DataSet": {
      const v = {numOfColumns: 2, types: ["Int32", "String"], columns: ["count", "label"],
                 rows: [[-i, `r${i}`], [i * 1000, `s${i}`]]};
      return [v, {count: [-i, i * 1000], label: [`r${i}`, `s${i}`]}];
    }
  }
  throw new Error(type);
}

const expect = fs.openSync(expectFile, "w");
let published = 0, rebirths = 0, i = 0, timer = null, done = false;
const client = sparkplug.newClient({serverUrl: `tcp://127.0.0.1:${port}`, username: "", password: "",
                                    groupId: group, edgeNode: node, clientId: `cirrus-${group}-${node}`,
                                    version: "spBv1.0", publishDeath: true, keepalive: 10});

function record(type, timestamp, values) {
  fs.writeSync(expect, JSON.stringify({type, device: type[0] === "D" ? device : null, timestamp, values}) + "\n");
}

function births() {
  const at = T0 + i * 1000;
  client.publishNodeBirth({timestamp: at, metrics: [
    {name: "Node Control/Rebirth", type: "Boolean", value: false, alias: 1000, timestamp: at}]});
  record("NBIRTH", at, {"Node Control/Rebirth": false});
  const values = {};
  client.publishDeviceBirth(device, {timestamp: at, metrics: TYPES.map((type, k) => {
    const [v, e] = value(type, i);
    values[type] = e;
    return {name: type, alias: k + 1, type, value: v, timestamp: at};
  })});
  record("DBIRTH", at, values);
  published += 2;
}

function next() {
  if (i >= messages) {
    done = true;
    client.publishDeviceDeath(device, {timestamp: Date.now()});
    published += 2;  // the DDEATH, and the NDEATH the client publishes on stop
    setTimeout(() => { client.stop(); fs.closeSync(expect); console.log(`done ${published}`); }, 500);
    return;
  }
  i += 1;
  const at = T0 + i * 1000, values = {};
  client.publishDeviceData(device, {timestamp: at, metrics: TYPES.map((type, k) => {
    const [v, e] = value(type, i);
    values[type] = e;
    return {alias: k + 1, type, value: v, timestamp: at};
  })});
  record("DDATA", at, values);
  published += 1;
  timer = setTimeout(next, interval);
}

client.on("birth", () => {
  if (done) return;
  births();
  if (timer === null) timer = setTimeout(next, interval);
});
client.on("ncmd", (payload) => {
  if (!done && payload.metrics.some((m) => m.name === "Node Control/Rebirth" && m.value === true)) {
    births();
    rebirths += 1;
    console.log("rebirth");
  }
});
client.on("error", (error) => console.log(`error ${error}`));
