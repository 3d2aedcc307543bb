// Readiness probe for kafka.sh: one real admin round trip (describe cluster + list topics).
// Exit 0 when the broker answers, 1 otherwise. Compiled once per Kafka version into the cache by `kafka.sh fetch`.
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListTopicsOptions;

public final class ReadyProbe {
    public static void main(String[] args) {
        if (args.length != 1) {
            System.err.println("usage: ReadyProbe HOST:PORT");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "8000");
        try (Admin admin = Admin.create(props)) {
            int nodes = admin.describeCluster().nodes().get(8, TimeUnit.SECONDS).size();
            int topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                    .names().get(8, TimeUnit.SECONDS).size();
            if (nodes < 1) {
                throw new IllegalStateException("no broker in cluster metadata yet");
            }
            System.out.println("ready: " + nodes + " node(s), " + topics + " topic(s)");
        } catch (Exception e) {
            System.err.println("not ready: " + e);
            System.exit(1);
        }
    }
}
