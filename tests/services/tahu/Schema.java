/**
 * Writes tahu-core's compiled sparkplug_b.proto to stdout as a serialized FileDescriptorProto,
 * so the tests can check factoryflow's declaration of the Sparkplug B payload against Tahu's.
 */
public class Schema {
    public static void main(String[] args) throws Exception {
        System.out.write(org.eclipse.tahu.protobuf.SparkplugBProto.getDescriptor().toProto().toByteArray());
        System.out.flush();
    }
}
