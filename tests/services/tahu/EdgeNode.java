// A Sparkplug B edge node built on Eclipse Tahu's Java implementation (tahu-core: its payload
// model and SparkplugBPayloadEncoder) and Eclipse Paho's Java client, for the tests: an outside
// encoder, not the project's. Run as a single source file (java -cp <jars> EdgeNode.java).
//
// Arguments: port group node device messages interval_ms expect_file bdseq [pause_at]
// It connects to 127.0.0.1:port with its NDEATH (bdSeq) as the Will, subscribes to its NCMD
// topic, publishes an NBIRTH and a DBIRTH of `device` naming a metric of every Sparkplug datatype
// with an alias, then `messages` DDATA by alias only (datatypes stripped, as Tahu sends data),
// every `interval_ms`, with negative and extreme values; then a DDEATH and an NDEATH. A Rebirth
// NCMD (Node Control/Rebirth = true) is answered with a new NBIRTH and DBIRTH (same bdSeq).
// Every record-bearing message's values go to `expect_file` (JSON lines) as it is published;
// stdout says "rebirth" per answered request and "done <published>" at the end. With pause_at,
// it stops before DDATA number pause_at, says "paused", and goes on once the file
// <expect_file>.go exists (the test kills and restarts the broker meanwhile): reconnected, it
// is born again (Sparkplug: births first on every new session) and sends the rest.
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.FileWriter;
import java.math.BigInteger;
import java.util.*;
import java.util.concurrent.atomic.AtomicBoolean;
import org.eclipse.paho.client.mqttv3.*;
import org.eclipse.paho.client.mqttv3.persist.MemoryPersistence;
import org.eclipse.tahu.message.SparkplugBPayloadDecoder;
import org.eclipse.tahu.message.SparkplugBPayloadEncoder;
import org.eclipse.tahu.message.model.*;

public class EdgeNode {
    static final ObjectMapper JSON = new ObjectMapper();
    static final SparkplugBPayloadEncoder ENCODER = new SparkplugBPayloadEncoder();
    static final long T0 = 1767225600000L; // 2026-01-01T00:00:00Z
    static final String[] TYPES = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
        "Float", "Double", "Boolean", "String", "DateTime", "Text", "UUID", "Bytes", "File", "DataSet",
        "Template", "Int8Array", "Int16Array", "Int32Array", "Int64Array", "UInt8Array", "UInt16Array",
        "UInt32Array", "UInt64Array", "FloatArray", "DoubleArray", "BooleanArray", "StringArray",
        "DateTimeArray"};
    static final int[] CODES = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 16, 19, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31, 32, 33, 34};

    static String group, node, device;
    static long bdSeq;
    static long seq = 0;
    static int published = 0;
    static MqttClient client;
    static FileWriter expect;

    static <T> T pick(T[] values, int i) { return values[i % values.length]; }

    static BigInteger big(String s) { return new BigInteger(s); }

    /** The value of metric `type` in message `i`, and its expected JSON form. */
    static Object[] value(String type, int i) throws Exception {
        switch (type) {
            case "Int8": { Byte v = pick(new Byte[]{-128, -5, -1, 0, 1, 127}, i); return new Object[]{v, v}; }
            case "Int16": { Short v = pick(new Short[]{-32768, -300, -1, 0, 32767}, i); return new Object[]{v, v}; }
            case "Int32": { Integer v = pick(new Integer[]{Integer.MIN_VALUE, -70000, -1, 0, Integer.MAX_VALUE}, i); return new Object[]{v, v}; }
            case "Int64": { Long v = pick(new Long[]{Long.MIN_VALUE, -5000000000L, -1L, 0L, Long.MAX_VALUE}, i); return new Object[]{v, v}; }
            case "UInt8": { Short v = pick(new Short[]{0, 1, 200, 255}, i); return new Object[]{v, v}; }
            case "UInt16": { Integer v = pick(new Integer[]{0, 40000, 65535}, i); return new Object[]{v, v}; }
            case "UInt32": { Long v = pick(new Long[]{0L, 3000000000L, 4294967295L}, i); return new Object[]{v, v}; }
            case "UInt64": { BigInteger v = pick(new BigInteger[]{BigInteger.ZERO, big("9223372036854775813"), big("18446744073709551615")}, i); return new Object[]{v, v}; }
            case "Float": { Float v = pick(new Float[]{-1.5e38f, 3.25f, Float.MIN_VALUE, -0.1f}, i); return new Object[]{v, v.doubleValue()}; }
            case "Double": { Double v = pick(new Double[]{-1e308, 2.5, Double.MIN_VALUE, 1.0 / 3}, i); return new Object[]{v, v}; }
            case "Boolean": { Boolean v = i % 2 == 0; return new Object[]{v, v}; }
            case "String": { String v = "s-" + i + "-\u00fc"; return new Object[]{v, v}; }
            case "DateTime": { Date v = new Date(T0 - 86400000L + i * 1000L); return new Object[]{v, v.getTime()}; }
            case "Text": { String v = "line " + i + "\nnext"; return new Object[]{v, v}; }
            case "UUID": { String v = new UUID(42, i).toString(); return new Object[]{v, v}; }
            case "Bytes": { byte[] v = {(byte) i, (byte) 255, 0}; return new Object[]{v, hex(v)}; }
            case "File": { byte[] b = ("file " + i).getBytes("UTF-8"); return new Object[]{new File("f" + i + ".txt", b), hex(b)}; }
            case "DataSet": {
                DataSet ds = new DataSet.DataSetBuilder(2).addColumnName("count").addColumnName("label")
                    .addType(DataSetDataType.Int32).addType(DataSetDataType.String)
                    .addRow(new Row.RowBuilder().addValue(new Value<>(DataSetDataType.Int32, -i))
                        .addValue(new Value<>(DataSetDataType.String, "r" + i)).createRow())
                    .addRow(new Row.RowBuilder().addValue(new Value<>(DataSetDataType.Int32, i * 1000))
                        .addValue(new Value<>(DataSetDataType.String, "s" + i)).createRow()).createDataSet();
                Map<String, Object> e = new LinkedHashMap<>();
                e.put("count", List.of(-i, i * 1000));
                e.put("label", List.of("r" + i, "s" + i));
                return new Object[]{ds, e};
            }
            case "Template": {
                Template t = new Template.TemplateBuilder().templateRef("Motor").definition(false)
                    .addMetric(new Metric.MetricBuilder("rpm", MetricDataType.Int16, (short) (-i)).createMetric())
                    .addMetric(new Metric.MetricBuilder("amps", MetricDataType.Double, i / 4.0).createMetric())
                    .createTemplate();
                Map<String, Object> e = new LinkedHashMap<>();
                e.put("rpm", -i);
                e.put("amps", i / 4.0);
                return new Object[]{t, e};
            }
            case "Int8Array": return new Object[]{new Byte[]{-128, (byte) i, 127}, List.of(-128, (int) (byte) i, 127)};
            case "Int16Array": return new Object[]{new Short[]{-32768, (short) -i}, List.of(-32768, -i)};
            case "Int32Array": return new Object[]{new Integer[]{Integer.MIN_VALUE, -i}, List.of(Integer.MIN_VALUE, -i)};
            case "Int64Array": return new Object[]{new Long[]{Long.MIN_VALUE, (long) -i}, List.of(Long.MIN_VALUE, (long) -i)};
            case "UInt8Array": return new Object[]{new Short[]{255, (short) (i % 256)}, List.of(255, i % 256)};
            case "UInt16Array": return new Object[]{new Integer[]{65535, i}, List.of(65535, i)};
            case "UInt32Array": return new Object[]{new Long[]{4294967295L, (long) i}, List.of(4294967295L, (long) i)};
            case "UInt64Array": return new Object[]{new BigInteger[]{big("18446744073709551615"), BigInteger.valueOf(i)},
                List.of(big("18446744073709551615"), BigInteger.valueOf(i))};
            case "FloatArray": return new Object[]{new Float[]{-0.5f, i * 1.25f}, List.of(-0.5, (double) (i * 1.25f))};
            case "DoubleArray": return new Object[]{new Double[]{-1e-300, i / 3.0}, List.of(-1e-300, i / 3.0)};
            case "BooleanArray": return new Object[]{new Boolean[]{true, false, i % 2 == 1, true, true, false, false, true, true},
                List.of(true, false, i % 2 == 1, true, true, false, false, true, true)};
            case "StringArray": return new Object[]{new String[]{"a" + i, "", "\u00e9"}, List.of("a" + i, "", "\u00e9")};
            case "DateTimeArray": return new Object[]{new Date[]{new Date(T0), new Date(T0 + i)}, List.of(T0, T0 + i)};
            default: throw new IllegalArgumentException(type);
        }
    }

    static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) out.append(String.format("%02x", b));
        return out.toString();
    }

    static String topic(String kind, String dev) {
        return "spBv1.0/" + group + "/" + kind + "/" + node + (dev == null ? "" : "/" + dev);
    }

    static void publish(String kind, String dev, SparkplugBPayload payload, Map<String, Object> values) throws Exception {
        boolean birth = kind.endsWith("BIRTH");
        byte[] bytes = ENCODER.getBytes(payload, !birth); // data: datatypes stripped, as Tahu sends them
        client.publish(topic(kind, dev), bytes, 1, false);
        published++;
        if (values != null) {
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("type", kind);
            line.put("device", dev);
            line.put("timestamp", payload.getTimestamp().getTime());
            line.put("values", values);
            expect.write(JSON.writeValueAsString(line) + "\n");
            expect.flush();
        }
    }

    static long nextSeq() { long s = seq; seq = (seq + 1) % 256; return s; }

    static void births(int i) throws Exception {
        seq = 0;
        Date at = new Date(T0 + i * 1000L);
        SparkplugBPayload nbirth = new SparkplugBPayload.SparkplugBPayloadBuilder().setTimestamp(at).setSeq(nextSeq())
            .addMetric(new Metric.MetricBuilder("bdSeq", MetricDataType.Int64, bdSeq).createMetric())
            .addMetric(new Metric.MetricBuilder("Node Control/Rebirth", MetricDataType.Boolean, false).alias(1000L)
                .timestamp(at).createMetric())
            .addMetric(new Metric.MetricBuilder("Motor", MetricDataType.Template, new Template.TemplateBuilder()
                .definition(true).version("1")
                .addMetric(new Metric.MetricBuilder("rpm", MetricDataType.Int16, (short) 0).createMetric())
                .addMetric(new Metric.MetricBuilder("amps", MetricDataType.Double, 0.0).createMetric())
                .createTemplate()).createMetric())
            .createPayload();
        Map<String, Object> nvalues = new LinkedHashMap<>();
        nvalues.put("Node Control/Rebirth", false);
        publish("NBIRTH", null, nbirth, nvalues);
        SparkplugBPayload.SparkplugBPayloadBuilder dbirth = new SparkplugBPayload.SparkplugBPayloadBuilder()
            .setTimestamp(at).setSeq(nextSeq());
        Map<String, Object> dvalues = new LinkedHashMap<>();
        for (int k = 0; k < TYPES.length; k++) {
            Object[] v = value(TYPES[k], i);
            Metric.MetricBuilder m = new Metric.MetricBuilder(TYPES[k], MetricDataType.fromInteger(CODES[k]), v[0])
                .alias((long) k + 1).timestamp(at);
            if (TYPES[k].equals("Double")) {
                m.properties(new PropertySet.PropertySetBuilder()
                    .addProperty("engUnit", new PropertyValue(PropertyDataType.String, "\u00b0C"))
                    .addProperty("engLow", new PropertyValue(PropertyDataType.Int8, (byte) -40))
                    .addProperty("Quality", new PropertyValue(PropertyDataType.Int32, 192)).createPropertySet());
                dvalues.put("Double:engUnit", "\u00b0C");
                dvalues.put("Double:engLow", -40);
                dvalues.put("Double:Quality", 192);
            }
            dbirth.addMetric(m.createMetric());
            dvalues.put(TYPES[k], v[1]);
            if (TYPES[k].equals("File")) dvalues.put("File:file_name", "f" + i + ".txt");
        }
        publish("DBIRTH", device, dbirth.createPayload(), dvalues);
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        group = args[1];
        node = args[2];
        device = args[3];
        int messages = Integer.parseInt(args[4]);
        long interval = Long.parseLong(args[5]);
        expect = new FileWriter(args[6]);
        bdSeq = Long.parseLong(args[7]);
        int pauseAt = args.length > 8 ? Integer.parseInt(args[8]) : -1;
        java.io.File go = new java.io.File(args[6] + ".go");
        AtomicBoolean rebirth = new AtomicBoolean(false);

        client = new MqttClient("tcp://127.0.0.1:" + port, "tahu-" + group + "-" + node, new MemoryPersistence());
        MqttConnectOptions options = new MqttConnectOptions();
        options.setCleanSession(true);
        options.setMaxInflight(1000);
        options.setAutomaticReconnect(true);
        options.setMaxReconnectDelay(1000);
        SparkplugBPayload death = new SparkplugBPayload.SparkplugBPayloadBuilder().setTimestamp(new Date())
            .addMetric(new Metric.MetricBuilder("bdSeq", MetricDataType.Int64, bdSeq).createMetric()).createPayload();
        options.setWill(topic("NDEATH", null), ENCODER.getBytes(death, false), 1, false);
        client.setCallback(new MqttCallbackExtended() {
            public void connectComplete(boolean reconnect, String uri) {
                if (!reconnect) return;
                try {
                    client.subscribe(topic("NCMD", null), 0);
                } catch (MqttException e) {
                    System.out.println("resubscribe failed: " + e);
                }
                rebirth.set(true); // a new session: births first
            }
            public void connectionLost(Throwable cause) { System.out.println("connection lost: " + cause); }
            public void deliveryComplete(IMqttDeliveryToken token) {}
            public void messageArrived(String t, MqttMessage message) throws Exception {
                SparkplugBPayload command = new SparkplugBPayloadDecoder().buildFromByteArray(message.getPayload(), null);
                for (Metric m : command.getMetrics()) {
                    if ("Node Control/Rebirth".equals(m.getName()) && Boolean.TRUE.equals(m.getValue())) rebirth.set(true);
                }
            }
        });
        client.connect(options);
        client.subscribe(topic("NCMD", null), 0);
        births(0);
        for (int i = 1; i <= messages; i++) {
            if (i == pauseAt) {
                System.out.println("paused");
                System.out.flush();
                while (!go.exists()) Thread.sleep(50);
                while (!client.isConnected()) Thread.sleep(50);
            }
            if (rebirth.getAndSet(false)) {
                births(i);
                System.out.println("rebirth");
                System.out.flush();
            }
            Date at = new Date(T0 + i * 1000L);
            SparkplugBPayload.SparkplugBPayloadBuilder data = new SparkplugBPayload.SparkplugBPayloadBuilder()
                .setTimestamp(at).setSeq(nextSeq());
            Map<String, Object> values = new LinkedHashMap<>();
            for (int k = 0; k < TYPES.length; k++) {
                Object[] v = value(TYPES[k], i);
                if (k == 9 && i % 7 == 3) { // a null Double now and then
                    data.addMetric(new Metric.MetricBuilder((long) k + 1, MetricDataType.Double, null).timestamp(at)
                        .createMetric());
                    values.put(TYPES[k], null);
                    continue;
                }
                data.addMetric(new Metric.MetricBuilder((long) k + 1, MetricDataType.fromInteger(CODES[k]), v[0])
                    .timestamp(at).createMetric());
                values.put(TYPES[k], v[1]);
                if (TYPES[k].equals("File")) values.put("File:file_name", "f" + i + ".txt");
            }
            publish("DDATA", device, data.createPayload(), values);
            if (interval > 0) Thread.sleep(interval);
        }
        publish("DDEATH", device, new SparkplugBPayload.SparkplugBPayloadBuilder().setTimestamp(new Date())
            .setSeq(nextSeq()).createPayload(), null);
        publish("NDEATH", null, death, null);
        client.disconnect();
        expect.close();
        System.out.println("done " + published);
    }
}
