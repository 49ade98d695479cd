// A Sparkplug B host application built on Eclipse Tahu's Java implementation (tahu-core's
// SparkplugBPayloadDecoder) and Eclipse Paho's Java client, for the tests: it decodes what an
// edge node under test publishes, as an outside host would. Run from its compiled class.
//
// Arguments: port group out_file
// It subscribes to spBv1.0/<group>/#, keeps each edge node's alias -> datatype map from its
// births (as Tahu's decoder needs for data without datatypes) and writes one JSON line per
// message to out_file: topic, seq, timestamp, and each metric's name, alias, datatype, value
// (text), timestamp and is_null. A line "rebirth <edge node>" on stdin publishes a Rebirth NCMD.
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.FileWriter;
import java.io.InputStreamReader;
import java.util.*;
import org.eclipse.paho.client.mqttv3.*;
import org.eclipse.paho.client.mqttv3.persist.MemoryPersistence;
import org.eclipse.tahu.message.SparkplugBPayloadDecoder;
import org.eclipse.tahu.message.SparkplugBPayloadEncoder;
import org.eclipse.tahu.message.model.*;
import org.eclipse.tahu.model.MetricDataTypeMap;

public class Host {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String group = args[1];
        FileWriter out = new FileWriter(args[2]);
        ObjectMapper json = new ObjectMapper();
        Map<String, MetricDataTypeMap> types = new HashMap<>();
        MqttClient client = new MqttClient("tcp://127.0.0.1:" + port, "tahu-host-" + group, new MemoryPersistence());
        client.setCallback(new MqttCallback() {
            public void connectionLost(Throwable cause) { System.out.println("connection lost: " + cause); }
            public void deliveryComplete(IMqttDeliveryToken token) {}
            public void messageArrived(String topic, MqttMessage message) throws Exception {
                String[] levels = topic.split("/");
                String kind = levels[2];
                if (kind.equals("NCMD") || kind.equals("DCMD")) return;
                String node = levels[3];
                String key = levels.length > 4 ? node + "/" + levels[4] : node;
                MetricDataTypeMap map = types.computeIfAbsent(key, k -> new MetricDataTypeMap());
                Map<String, Object> line = new LinkedHashMap<>();
                line.put("topic", topic);
                try {
                    SparkplugBPayload payload = new SparkplugBPayloadDecoder().buildFromByteArray(
                        message.getPayload(), kind.endsWith("BIRTH") ? null : map);
                    line.put("seq", payload.getSeq());
                    line.put("timestamp", payload.getTimestamp() == null ? null : payload.getTimestamp().getTime());
                    List<Map<String, Object>> metrics = new ArrayList<>();
                    for (Metric m : payload.getMetrics()) {
                        if (kind.endsWith("BIRTH") && m.hasAlias()) map.addMetricDataType(m.getAlias(), m.getDataType());
                        Map<String, Object> metric = new LinkedHashMap<>();
                        metric.put("name", m.getName());
                        metric.put("alias", m.hasAlias() ? m.getAlias() : null);
                        metric.put("datatype", m.getDataType() == null ? null : m.getDataType().toString());
                        Object v = m.getValue();
                        metric.put("value", v == null ? null : v instanceof Date ? String.valueOf(((Date) v).getTime())
                            : v instanceof byte[] ? Base64.getEncoder().encodeToString((byte[]) v) : v.toString());
                        metric.put("timestamp", m.getTimestamp() == null ? null : m.getTimestamp().getTime());
                        metric.put("is_null", m.isNull());
                        metrics.add(metric);
                    }
                    line.put("metrics", metrics);
                } catch (Throwable e) {
                    line.put("error", e.toString());
                }
                synchronized (out) {
                    out.write(json.writeValueAsString(line) + "\n");
                    out.flush();
                }
            }
        });
        MqttConnectOptions options = new MqttConnectOptions();
        options.setCleanSession(true);
        client.connect(options);
        client.subscribe("spBv1.0/" + group + "/#", 1);
        System.out.println("subscribed");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String command;
        while ((command = in.readLine()) != null) {
            if (command.startsWith("rebirth ")) {
                SparkplugBPayload ncmd = new SparkplugBPayload.SparkplugBPayloadBuilder().setTimestamp(new Date())
                    .addMetric(new Metric.MetricBuilder("Node Control/Rebirth", MetricDataType.Boolean, true).createMetric())
                    .createPayload();
                client.publish("spBv1.0/" + group + "/NCMD/" + command.substring(8),
                               new SparkplugBPayloadEncoder().getBytes(ncmd, false), 0, false);
                System.out.println("asked");
                System.out.flush();
            }
        }
        client.disconnect();
        out.close();
    }
}
