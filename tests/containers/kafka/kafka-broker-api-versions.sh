#!/bin/sh
# apache/kafka's tool of this name, as the compose file's health check calls it.
exec java -Xmx128m -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
